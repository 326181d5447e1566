"""xen+domU: templates, the merge of the domU's KTAP into dom0's, and a real nested boot."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kpatch_tool import ktap, nested, results
from kpatch_tool.errors import UsageError

DATA = Path(__file__).parent / "data"


def test_recorded_nested_console_gives_dom0_and_domu_results():
    """A console log recorded from a real nested boot here (Xen 4.17, 6.1 dom0 + domU)."""
    k = ktap.parse((DATA / "nested-console.log").read_text())
    assert k.plan_seen
    cases = results.cases_from_ktap(k, "xen+domU")
    by = {(c.classname, c.name): c.status for c in cases}
    assert by[("dom0.xen+domU", "xl-create")] == "pass"
    assert by[("dom0.xen+domU", "vif-connected")] == "pass"
    assert by[("dom0.xen+domU", "ping-domU")] == "pass"
    # The domU's own document is a subtest of dom0's: its groups appear below "domU".
    assert by[("domU.xen+domU", "base.kernel-release")] == "pass"
    assert by[("domU.xen+domU", "domU-net.ping-dom0")] == "pass"


def test_dom0_init_renders_series_checks_and_is_valid_shell(project_ws):
    smoke = [{"series": "s1", "name": "threads", "where": "dom0", "run": "ps -eo comm | grep \"^$VIF-q\"",
              "expect": "guest-rx", "timeout": 20},
             {"series": "s1", "name": "in-domu", "where": "domU", "run": "true", "expect": "", "timeout": 5}]
    text = nested.render_dom0_init(project_ws, smoke)
    assert "check \"    \" 1 threads 20 guest-rx" in text
    assert "in-domu" not in text  # domU checks go into the domU's image, not dom0's
    assert 'echo "1..4"' in text
    res = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr
    # Last: dom0's own kernel log, once the domU has come and gone.
    tail = text[text.index("# Last: what dom0"):]
    assert "# Subtest: after-checks" in tail and "dmesg-clean" in tail and "Grant still in use" in tail


@pytest.mark.parametrize("log, verdict", [
    ("KTAP version 1\n1..1\nok 1 base\n# kpt-init: done at uptime 33.45s\n", "ok 3 domU"),
    # panic_on_warn: the domU died in its checks, before any "not ok" line.
    ("KTAP version 1\n1..2\nok 1 base\n[ 20.1] Kernel panic - not syncing: panic_on_warn set ...\n",
     "not ok 3 domU # ended before its checks finished"),
])
def test_a_domu_that_dies_in_its_checks_is_not_ok(project_ws, tmp_path, log, verdict):
    """dom0's verdict on the domU, run by sh on a console log of the domU (no Xen here)."""
    text = nested.render_dom0_init(project_ws, [{"series": "s", "name": "x", "where": "dom0", "run": "true"}])
    block = text[text.index("LOG="):text.index('if [ -f "/var/log/xen/qemu-dm')]
    (tmp_path / "guest.log").write_text(log)
    block = block.replace("LOG=/var/log/xen/console/guest-$DOMU.log", f"LOG={tmp_path}/guest.log")
    res = subprocess.run(["sh", "-c", f'cut=""\n{block}'], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().splitlines()[-1] == verdict


def test_dom0_resends_the_release_until_the_domu_has_gone(project_ws, tmp_path):
    """The domU listens only after its own checks: a release sent before that is refused.

    dom0's release loop is run with stand-ins for xl and busybox nc (no Xen here): the
    domU refuses three connections, then accepts (the acknowledgement: dom0 stops
    sending) and shuts down. A single send would leave it waiting out its listen
    timeout; sends after the acceptance would find nobody listening.
    """
    text = nested.render_dom0_init(project_ws, [])
    start = text.index("# Let the domU finish")
    block = text[start:text.index("cut=", start)]
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "xl").write_text(f'#!/bin/sh\n[ ! -e {tmp_path}/gone ]\n')
    (bin_ / "busybox").write_text(
        f'#!/bin/sh\nn=$(cat {tmp_path}/tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp_path}/tries\n'
        f'cat >/dev/null\nif [ $n -ge 4 ]; then touch {tmp_path}/gone; exit 0; fi\nexit 1\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    res = subprocess.run(["sh", "-c", f"mark() {{ echo \"mark $1\"; }}; DOMU=1; DOMU_IP=10.0.0.2\n{block}"],
                         capture_output=True, text=True, env={"PATH": f"{bin_}:/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tries").read_text().strip() == "4"
    assert res.stdout.split() == ["mark", "domU-released", "mark", "domU-gone"]
    assert (tmp_path / "gone").exists()


def test_domu_config_takes_the_series_settings(project_ws, tmp_path):
    cfg = nested.render_domu_cfg(project_ws, {"memory": 300, "vcpus": 2, "vif_options": "rate=10Mb/s",
                                             "extra_config": ['cpu_weight = 512']})
    assert "memory = 300" in cfg and "vcpus = 2" in cfg
    assert "vif = [ 'bridge=xenbr0,mac=00:16:3e:00:00:02,script=/etc/xen/scripts/kpt-vif,rate=10Mb/s' ]" in cfg
    assert "cpu_weight = 512" in cfg
    # A WARN() in the domU ends it: its checks cannot pass over one.
    assert "panic_on_warn=1" in cfg


@pytest.mark.parametrize("vif_env, dev", [({"vif": "vif7.0"}, "vif7.0"), ({}, "vif3.1")])
def test_vif_hotplug_script_joins_the_bridge_and_reports_connected(tmp_path, vif_env, dev):
    """The script dom0's libxl runs for the domU's vif (templates/vif-hotplug.sh.j2), with
    xenstore-read, xenstore-write and ip faked on PATH: there is no xenstore here, and a real
    `ip link set` would change the host. Without $vif it names the device from XENBUS_PATH."""
    from kpatch_tool import templating

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    for tool, out in (("xenstore-read", "xenbr0"), ("xenstore-write", ""), ("ip", "")):
        (bin_ / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\n[ -n "{out}" ] && echo {out}\nexit 0\n')
        (bin_ / tool).chmod(0o755)
    script = tmp_path / "kpt-vif"
    script.write_text(templating.env().get_template("vif-hotplug.sh.j2").render() + "\n")
    path = "/local/domain/0/backend/vif/3/1"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "XENBUS_PATH": path, **vif_env}
    for action in ("online", "offline"):
        res = subprocess.run(["sh", str(script), action, "type_if=vif"], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert calls.read_text().splitlines() == [
        f"xenstore-read {path}/bridge",
        f"ip link set dev {dev} address fe:ff:ff:ff:ff:ff master xenbr0 up",
        f"xenstore-write {path}/hotplug-status connected"]  # and "offline" runs nothing
    (bin_ / "ip").write_text("#!/bin/sh\nexit 2\n")
    res = subprocess.run(["sh", str(script), "online"], env=env, capture_output=True)
    assert res.returncode == 1, "a vif that cannot join the bridge fails the hotplug (and xl create says so)"


def test_domu_kernel_is_the_builds_vmlinux_stripped_or_else_its_bzimage(tmp_ws, tmp_path):
    """xl copies an ELF where it would decompress a bzImage's payload under TCG. Any ELF does
    for objcopy: a program compiled with symbols and debug info stands in for vmlinux."""
    from types import SimpleNamespace

    ws = tmp_ws()
    build_dir = tmp_path / "build"
    (build_dir / "arch/x86/boot").mkdir(parents=True)
    (build_dir / "arch/x86/boot/bzImage").write_bytes(b"bz")
    build = SimpleNamespace(build_dir=build_dir, bzimage=build_dir / "arch/x86/boot/bzImage")
    assert nested.domu_kernel(ws, build) == ("/boot/kpt/bzImage", build.bzimage)
    subprocess.run(["gcc", "-g", "-x", "c", "-", "-o", build_dir / "vmlinux"], input=b"int main(void){return 0;}\n",
                   check=True)
    path, host = nested.domu_kernel(ws, build)
    assert path == "/boot/kpt/vmlinux" and host.parent == ws.cache_dir / "images"
    nm = subprocess.run(["nm", host], capture_output=True, text=True)
    sections = subprocess.run(["readelf", "-S", host], capture_output=True, text=True).stdout
    assert host.read_bytes()[:4] == b"\x7fELF" and "no symbols" in nm.stderr and ".debug_info" not in sections
    assert nested.domu_kernel(ws, build) == (path, host)  # cached by the vmlinux's content
    cfg = nested.render_domu_cfg(ws, {"memory": 256, "vcpus": 2, "vif_options": "", "extra_config": []}, path)
    assert 'kernel = "/boot/kpt/vmlinux"' in cfg


def test_domu_settings_are_read_from_series_toml(tmp_ws):
    ws = tmp_ws()
    (ws.patches_dir / "s").mkdir(parents=True)
    (ws.patches_dir / "s" / "series.toml").write_text('[domU]\nvcpus = 2\nvif_options = "rate=1Mb/s"\n')
    s = nested.domu_settings(ws, ["s"])
    assert s["vif_options"] == "rate=1Mb/s" and s["memory"] == 256


def test_domu_kernel_arguments_come_from_the_series_and_are_checked(project_ws, tmp_ws):
    ws = tmp_ws()
    (ws.patches_dir / "s").mkdir(parents=True)
    (ws.patches_dir / "s" / "series.toml").write_text('[domU]\nextra = "iommu=soft"\n')
    s = nested.domu_settings(ws, ["s"])
    assert 'extra = "console=hvc0 panic=-1 panic_on_warn=1 pty.legacy_count=0 iommu=soft"' in nested.render_domu_cfg(project_ws, s)
    (ws.patches_dir / "s" / "series.toml").write_text('[domU]\nextra = "a\\" b"\n')
    with pytest.raises(UsageError, match=r"domU\.extra"):
        nested.domu_settings(ws, ["s"])


@pytest.mark.nested
@pytest.mark.slow
def test_real_nested_boot_runs_a_domu_over_a_vif(project_ws, dom0_build):
    from kpatch_tool import pipeline

    start = time.monotonic()
    res = pipeline.run_ci(project_ws, None, mode="xen+domU", rerun_boot=True)
    took = time.monotonic() - start
    assert res.exit_code == 0, res.message
    rr = results.load_json(res.run_dir / results.RESULTS_JSON)
    by = {(c.classname, c.name): c.status for c in rr.cases}
    assert by[("dom0.xen+domU", "ping-domU")] == "pass"
    assert by[("domU.xen+domU", "domU-net.ping-dom0")] == "pass"
    threads = next(c for c in rr.cases if c.name == "vif-queue-threads")
    # SMP dom0 and a 2-vCPU domU: netback gets two queues.
    assert "-q1-guest-rx" in threads.output
    print(f"nested run: {took:.1f}s")


def test_a_series_device_model_is_started_for_a_paused_domu(project_ws):
    """With a device model, xl creates the domU paused and dom0 unpauses it only once QEMU runs."""
    text = nested.render_dom0_init(project_ws, [], device_model_args=["-device", "xen-virtio,id=xv0,devid=0"],
                                   device_model_setup="seq 1 9 > /run/disk.img")
    assert "xl -vvv create -p " in text
    dm = next(line for line in text.splitlines() if " device-model " in line)
    assert "-xen-domid $D -xen-attach -machine xenpv" in dm and "xen-virtio,id=xv0,devid=0" in dm
    assert "xl unpause $D" in dm
    assert dm.index("seq 1 9 > /run/disk.img") < dm.index("-xen-domid")
    order = [line.split()[4] for line in text.splitlines() if line.startswith('check "    "')]
    assert order.index("device-model") > order.index("xl-create")
    assert subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True).returncode == 0
    plain = nested.render_dom0_init(project_ws, [])
    assert "create -p" not in plain and " device-model " not in plain


def test_device_model_files_carry_the_binary_its_libraries_but_not_glibc():
    """A real dynamically linked binary (git): its non-glibc libraries ride along, found by ldd."""
    import shutil

    git = Path(shutil.which("git")).resolve()
    files = nested.device_model_files(git)
    libs = [k.rsplit("/", 1)[1] for k in files if k.startswith(nested.DM_DIR + "/lib/")]
    assert "libz.so.1" in libs  # git links zlib
    assert not any(name.startswith(("libc.so", "ld-linux", "libm.so")) for name in libs)
    wrapper = files[nested.DM_WRAPPER].decode()
    assert f"LD_LIBRARY_PATH={nested.DM_DIR}/lib exec {nested.DM_DIR}/bin/qemu-system-i386.bin" in wrapper
    assert files[f"{nested.DM_DIR}/bin/qemu-system-i386.bin"] == git


@pytest.mark.parametrize("args, passed", [
    # libxl's arguments for a domain without VNC: "-vnc none" goes, the rest stays in order.
    (["-xen-domid", "3", "-vnc", "none", "-display", "none", "-name", "a b"],
     ["-xen-domid", "3", "-display", "none", "-name", "a b"]),
    (["-vnc", "127.0.0.1:0", "-m", "8"], ["-vnc", "127.0.0.1:0", "-m", "8"]),
    (["-m", "8", "-vnc"], ["-m", "8", "-vnc"]),
    ([], []),
])
def test_device_model_wrapper_drops_libxls_vnc_none(tmp_path, args, passed):
    """A QEMU built without VNC has no -vnc option (QEMU 10.2): libxl's "-vnc none" would stop it."""
    import shutil

    files = nested.device_model_files(Path(shutil.which("git")).resolve())
    wrapper = files[nested.DM_WRAPPER].decode()
    fake = tmp_path / "qemu-system-i386.bin"
    fake.write_text('#!/bin/sh\nfor a do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    script = wrapper.replace(f"{nested.DM_DIR}/bin/qemu-system-i386.bin", str(fake))
    res = subprocess.run(["sh", "-c", script, "qemu", *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == passed


@pytest.mark.heavy
@pytest.mark.nested
@pytest.mark.slow
@pytest.mark.parametrize("series, must_pass", [
    ("virtio-xenbus", ["frontend-connected", "virtio-status-features", "hwrng-data", "unbind-rebind"]),
    ("vring-dma-api", ["access-platform-negotiated", "virtio-blk-read", "virtio-net-ping"]),
    ("vring-dma-api-nogrant", ["machine-address-dma", "virtio-blk-read", "virtio-net-ping", "unbind-rebind"]),
    ("virtio-xenbus-6.12", ["unbind-rebind", "virtio-blk-read", "virtio-net-ping"]),
    ("virtio-xenbus-6.12-nogrant", ["machine-address-dma", "virtio-blk-read", "virtio-net-ping"]),
])
def test_virtio_over_xenbus_series_pass_in_nested_xen(project_ws, series, must_pass):
    """The whole of `kpt ci SERIES`: the series' kernel and QEMU built, QEMU as the domU's
    device model in dom0, the series' smoke in dom0 and the domU. Heavy: a QEMU build and a
    kernel build of their own (about 15 min cold on 2 cores) before a 5-minute nested boot."""
    from kpatch_tool import pipeline

    res = pipeline.run_ci(project_ws, series, mode="xen+domU", rerun_boot=True)
    rr = results.load_json(res.run_dir / results.RESULTS_JSON)
    got = {c.name.rsplit(".", 1)[-1]: c.status for c in rr.cases if c.classname.startswith("domU")}
    assert all(got.get(name) == "pass" for name in must_pass), got
    assert res.exit_code == 0, res.message


@pytest.mark.nested
@pytest.mark.slow
def test_domu_config_follows_the_whole_depends_chain(project_ws, tmp_path):
    """virtio-xenbus-6.12-nogrant has no checks of its own, only [domU] extra: its settings
    must still reach the domU (they were dropped when the chain was guessed from the checks),
    on top of vring-dma-api-nogrant's memory and device model arguments. Real dom0 root
    filesystem; the kernel is a stand-in file, nothing boots."""
    from types import SimpleNamespace

    from kpatch_tool import image, series as seriesmod

    chain = [s.name for s in seriesmod.resolve_depends(project_ws, "virtio-xenbus-6.12-nogrant")]
    (tmp_path / "bzImage").write_bytes(b"not a kernel")
    build = SimpleNamespace(kernel_release="6.12.0-kpt", bzimage=tmp_path / "bzImage", modules_dir=None)
    imgs = nested.images(project_ws, build=build, smoke=image.load_smoke(project_ws, chain), series=chain)
    res = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/xen/kpt-domU.cfg"],
                         input=imgs.dom0_initrd.read_bytes(), capture_output=True)
    cfg = res.stdout.decode()
    assert 'extra = "console=hvc0 panic=-1 panic_on_warn=1 pty.legacy_count=0 iommu=soft"' in cfg and "memory = 384" in cfg, cfg


def test_xen_from_the_tree_adds_a_check_naming_our_hypervisor_and_xl(project_ws):
    text = nested.render_dom0_init(project_ws, [], xl_sha256="ab" * 32, xen_build_id="cd" * 20)
    assert text.index(" xenconsoled ") < text.index(" xen-from-tree ") < text.index(" netback-module ")
    assert f"'^build_id={'cd' * 20} xl=abababababababab$'" in text
    assert "xen-from-tree" not in nested.render_dom0_init(project_ws, [])
    # Our install first on PATH: Debian's xl must not run against our libxenlight.
    assert f"export PATH={nested.DOM0_PATH_TREE}\n" in text


def test_an_overlay_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    """Debian's /usr/sbin/xl is a symlink to a wrapper many commands share: laying our xl
    over it must not overwrite the wrapper."""
    from kpatch_tool import rootfs

    root, dist = tmp_path / "root", tmp_path / "dist"
    (root / "usr/lib/xen-common/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/lib/xen-common/bin/xen-utils-wrapper").write_text("wrapper\n")
    (root / "usr/sbin/xl").symlink_to("../lib/xen-common/bin/xen-utils-wrapper")
    (dist / "usr/sbin").mkdir(parents=True)
    (dist / "usr/sbin/xl").write_text("our xl\n")
    (dist / "usr/sbin/xenstore-read").symlink_to("xenstore")
    (dist / "usr/include").mkdir()
    (dist / "usr/include/libxl.h").write_text("/* only for builds */\n")
    (dist / "usr/sbin/libxl.a").write_text("archive\n")
    before = rootfs.tree_digest(dist)
    rootfs.overlay(dist, root)
    assert (root / "usr/lib/xen-common/bin/xen-utils-wrapper").read_text() == "wrapper\n"
    assert not (root / "usr/sbin/xl").is_symlink() and (root / "usr/sbin/xl").read_text() == "our xl\n"
    assert (root / "usr/sbin/xenstore-read").is_symlink()
    assert not (root / "usr/include").exists() and not (root / "usr/sbin/libxl.a").exists()
    (dist / "usr/sbin/xl").write_text("another xl\n")
    assert rootfs.tree_digest(dist) != before


def test_xl_virtio_devices_go_into_the_domu_config_with_the_series_qemu(project_ws):
    settings = dict(nested.domu_settings(project_ws, []),
                    virtio=["type=virtio,device4,transport=xenbus", "type=virtio,device2,target=/run/d.img"])
    cfg = nested.render_domu_cfg(project_ws, settings, libxl_virtio=True)
    assert ("virtio = [ 'type=virtio,device4,transport=xenbus', 'type=virtio,device2,target=/run/d.img' ]"
            in cfg)
    assert f'device_model_override = "{nested.DM_WRAPPER}"' in cfg
    # Without a toolstack that knows them, they are not written (Debian's xl would refuse the key).
    assert "virtio" not in nested.render_domu_cfg(project_ws, settings)


def test_with_libxl_starting_the_device_model_dom0_checks_it_instead_of_starting_it(project_ws):
    text = nested.render_dom0_init(project_ws, [], device_model_args=["-device", "xen-virtio,id=xv0,devid=0"],
                                   device_model_setup="truncate -s 4M /run/d.img", libxl_virtio=True)
    assert "xl -vvv create -p" not in text and "-xen-attach" not in text
    assert (text.index(" device-model-setup ") < text.index(" xl-create ") < text.index(" xl-list ")
            < text.index(" device-model ") < text.index(" vif-connected "))
    # Once the domU is gone: no device model left, a second create and destroy are clean.
    assert (text.index(" dmesg-clean ") < text.index(" device-model-gone ") < text.index(" xl-recreate-destroy ")
            < text.index(" xl-dmesg-clean "))
    assert "xl-recreate-destroy" not in nested.render_dom0_init(project_ws, [])


def test_a_quote_in_a_virtio_spec_is_refused_naming_the_key(tmp_ws):
    from kpatch_tool import series as seriesmod

    ws = tmp_ws()
    d = ws.root / "patches" / "q"
    d.mkdir(parents=True)
    (d / "series.toml").write_text('name = "q"\nversion = 1\n[domU]\nvirtio = ["type=virtio,device4\'"]\n')
    with pytest.raises(UsageError, match=r"domU\.virtio\[0\]"):
        seriesmod.load_series(ws, "q")


def test_the_long_form_of_the_checks_is_asked_in_both_inits(project_ws):
    """kpt ci --long-checks: dom0's init and the domU's export KPT_LONG_CHECKS=1 to every check."""
    assert "export KPT_LONG_CHECKS=1" in nested.render_dom0_init(project_ws, [], long_checks=True)
    assert "KPT_LONG_CHECKS" not in nested.render_dom0_init(project_ws, [])
    from kpatch_tool import image

    groups = image.plan_groups("6.1.0", [], False, [], "domU")
    assert "export KPT_LONG_CHECKS=1" in image.render_init(project_ws, mode="domU", kernel_release="6.1.0",
                                                          groups=groups, hold_port=7777, long_checks=True)
    assert "KPT_LONG_CHECKS" not in image.render_init(project_ws, mode="domU", kernel_release="6.1.0",
                                                      groups=groups, hold_port=7777)


def test_dom0_waits_for_the_domu_as_long_as_its_checks_may_take(project_ws):
    """A domU check that takes longer than the old fixed 120 s (vring-dma-api's throughput
    comparison, 240 s) is not cut off: dom0 waits for the sum of the domU's check timeouts."""
    base = nested.domu_wait([])
    builtin = sum(c["timeout"] for c in nested.DOMU_CHECKS)
    assert base == max(nested.DOMU_TIMEOUT, builtin + nested.DOMU_FINISH)
    smoke = [{"series": "s", "name": "throughput", "where": "domU", "run": "true", "timeout": 240},
             {"series": "s", "name": "no-errors", "where": "domU", "run": "true", "timeout": 20},
             {"series": "s", "name": "skipped", "where": "domU", "skip": "not here", "timeout": 999},
             {"series": "s", "name": "dom0-side", "where": "dom0", "run": "true", "timeout": 500}]
    wait = nested.domu_wait(smoke)
    assert wait == builtin + 240 + 20 + nested.DOMU_FINISH
    text = nested.render_dom0_init(project_ws, smoke)
    assert f"end=$(( ${{up%.*}} + {wait} ))" in text
    assert f"domU still running after {wait}s" in text
    # Without long domU checks the floor holds.
    assert nested.domu_wait([{"name": "quick", "where": "domU", "run": "true", "timeout": 1}]) >= nested.DOMU_TIMEOUT
