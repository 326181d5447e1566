"""The boot stage: verdicts, results files, exit codes; real QEMU boots of a real kernel (slow).

The fast tests use a fake "qemu" (a shell script printing a console) and a fake
bzImage (just a boot header) so that every verdict path runs in well under a
second; the slow ones boot the guest profile's kernel under QEMU TCG.
"""

import json
import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpatch_tool import boot, image, qemu
from kpatch_tool.cli import main
from kpatch_tool.errors import BootError, PrereqError, SmokeFailed, UsageError

PASS_KTAP = """\
[    1.1] Run /init as init process
KTAP version 1
1..1
    KTAP version 1
    # Subtest: base
    1..2
    ok 1 kernel-release
    ok 2 dmesg-clean
ok 1 base
"""
FAIL_KTAP = PASS_KTAP.replace("    ok 2 dmesg-clean", "    # found: BUG: x\n    not ok 2 dmesg-clean # exit status 1") \
    .replace("ok 1 base", "not ok 1 base")


def _fake_bzimage(path: Path) -> Path:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """fake(console, then='exit'|'hang') -> (kernel, initrd): KPT_QEMU points at a script printing console."""

    def make(console: str, then: str = "exit"):
        script = tmp_path / f"qemu-{uuid.uuid4().hex[:6]}"
        body = "".join(f"echo '{line}'\n" for line in console.splitlines())
        script.write_text("#!/bin/sh\n" + body + ("sleep 600\n" if then == "hang" else "exit 0\n"))
        script.chmod(0o755)
        monkeypatch.setenv("KPT_QEMU", str(script))
        initrd = tmp_path / "initrd.cpio.gz"
        initrd.write_bytes(image.gzip_bytes(image.pack([])))
        return _fake_bzimage(tmp_path / "bzImage"), initrd

    qemu.kvm.cache_clear()
    monkeypatch.setattr(qemu, "kvm", lambda: (False, "test: TCG"))
    return make


def _boot(ws, kernel, initrd, run_dir, **kw):
    kw.setdefault("timeout", 20)
    return boot.boot(ws, mode=kw.pop("mode", "guest"), kernel=kernel, initrd=initrd, run_dir=run_dir, **kw)


def test_pass_verdict_writes_results_json_and_junit(tmp_ws, tmp_path, fake):
    kernel, initrd = fake(PASS_KTAP)
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run")
    assert r.verdict == "pass" and r.ok
    r.raise_for_verdict()
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert data["verdict"] == "pass" and data["counts"]["pass"] == 2
    assert data["extra"]["accel"] == "tcg"
    assert [c["classname"] for c in data["cases"]] == ["base.guest", "base.guest"]
    ET.parse(tmp_path / "run/results.xml")
    assert "Run /init" in (tmp_path / "run/console.log").read_text()


def test_failed_check_is_smoke_failed_exit_1(tmp_ws, tmp_path, fake):
    kernel, initrd = fake(FAIL_KTAP)
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run")
    assert r.verdict == "fail"
    with pytest.raises(SmokeFailed) as exc:
        r.raise_for_verdict()
    assert exc.value.exit_code == 1 and "base.guest:dmesg-clean" in exc.value.message
    assert "found: BUG: x" in exc.value.detail


# What dom0 prints when it had to destroy a domU whose checks did not finish:
# every result the domU printed passed, the suite itself did not.
CUT_KTAP = PASS_KTAP.replace("1..1\n", "1..2\n", 1) + """\
    # Subtest: domU
    1..1
        # Subtest: vring-dma-api
        1..1
        ok 1 virtio-net-ping
    ok 1 vring-dma-api
not ok 2 domU # destroyed after 120s: its checks did not finish
"""


def test_a_suite_that_failed_with_every_result_ok_fails_the_boot(tmp_ws, tmp_path, fake):
    """Seen on vring-dma-api-7.2: dom0 destroyed the domU in its throughput
    check; results.json counted the suite as failed, the boot said pass."""
    kernel, initrd = fake(CUT_KTAP)
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run")
    assert r.verdict == "fail" and "domU" in r.message
    with pytest.raises(SmokeFailed) as exc:
        r.raise_for_verdict()
    assert "domU.guest:(suite)" in exc.value.message
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert data["verdict"] == "fail" and data["counts"]["fail"] == 1


@pytest.mark.parametrize("console, then, verdict, words", [
    ("[ 1.0] Kernel panic - not syncing: Attempted to kill init!", "hang", "panic", "Attempted to kill init"),
    ("[ 1.0] booting\n[ 1.1] Run /init as init process", "exit", "no-ktap", "no KTAP plan"),
    ("KTAP version 1\n1..3\nok 1 a", "exit", "no-ktap", "incomplete"),
    ("[ 1.0] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x1/0x2\n" + PASS_KTAP, "exit", "oops", "WARNING: CPU"),
    ("[ 1.0] booting", "hang", "timeout", "no KTAP plan after 2s"),
])
def test_boot_problems_are_boot_errors_with_the_console_tail(tmp_ws, tmp_path, fake, console, then, verdict, words):
    kernel, initrd = fake(console, then)
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run", timeout=2)
    assert r.verdict == verdict and words in r.message
    with pytest.raises(BootError) as exc:
        r.raise_for_verdict()
    assert exc.value.exit_code == 6
    assert str(tmp_path / "run/console.log") in exc.value.detail
    assert console.splitlines()[0].strip() in exc.value.detail
    assert json.loads((tmp_path / "run/results.json").read_text())["verdict"] == verdict
    assert qemu.marked_pids(r.argv[r.argv.index("-name") + 1]) == []


@pytest.mark.parametrize("console, words", [
    ("[ 0.1] Linux version 6.1\n[ 0.5] Unpacking initramfs...\n[ 0.6] Freeing initrd memory: 9K\n"
     "[ 0.7] Run /init as init process\nKTAP version 1\n1..2\nok 1 a",
     "no verdict after 2s (1 of 2 KTAP results; stopped in phase checks, after kernel-init ended at"),
    ("[ 0.1] Linux version 6.1\n[ 0.5] Unpacking initramfs...",
     "no KTAP plan after 2s (stopped in phase initramfs, after kernel ended at"),
])
def test_a_timeout_names_the_phase_it_stopped_in(tmp_ws, tmp_path, fake, console, words):
    """A hang (here: the console stops and QEMU never exits) says where the boot got to."""
    kernel, initrd = fake(console, "hang")
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run", timeout=2)
    assert r.verdict == "timeout" and words in r.message, r.message
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert words in data["message"]
    # The phases that did end are kept, and the last one runs to where the runner stopped QEMU.
    assert [p["name"] for p in data["phases"]][-1] == "power-off"


def test_missing_xen_is_a_prereq_error(tmp_ws, tmp_path, fake):
    kernel, initrd = fake(PASS_KTAP)
    with pytest.raises(PrereqError, match="Xen hypervisor not found"):
        _boot(tmp_ws(), kernel, initrd, tmp_path / "run", mode="xen", xen=tmp_path / "no-xen.gz")


def test_not_a_kernel_is_a_usage_error_exit_2(tmp_ws, tmp_path):
    ws = tmp_ws()
    (tmp_path / "bz").write_text("#!/bin/sh\n")
    (tmp_path / "i.gz").write_bytes(image.gzip_bytes(image.pack([])))
    with pytest.raises(UsageError, match="not an x86 bzImage"):
        _boot(ws, tmp_path / "bz", tmp_path / "i.gz", tmp_path / "run")
    res = CliRunner().invoke(main, ["-w", str(ws.root), "boot", "--kernel", str(tmp_path / "bz"),
                                    "--initrd", str(tmp_path / "i.gz"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output


def test_cli_boot_and_results_print_the_table(tmp_ws, tmp_path, fake):
    ws = tmp_ws()
    kernel, initrd = fake(FAIL_KTAP)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["-w", str(ws.root), "boot", "--kernel", str(kernel), "--initrd", str(initrd),
                                    "--out", str(run)])
    assert res.exit_code == 1, res.output
    res = CliRunner().invoke(main, ["-w", str(ws.root), "results", str(run)])
    assert res.exit_code == 0 and "dmesg-clean" in res.output and "verdict fail" in res.output


# ---------------------------------------------------------------- real QEMU (slow)

@pytest.fixture(scope="session")
def real_kernel(request) -> Path:
    """KPT_TEST_BZIMAGE if set, else the guest profile built by kpt's build stage (lead's fixture)."""
    if os.environ.get("KPT_TEST_BZIMAGE"):
        return Path(os.environ["KPT_TEST_BZIMAGE"])
    return Path(request.getfixturevalue("guest_kernel"))


@pytest.mark.slow
def test_real_guest_boot_runs_base_and_series_checks(tmp_ws, tmp_path, real_kernel):
    ws = tmp_ws()
    release = qemu.bzimage_release(real_kernel)
    smoke = [{"series": "demo", "name": "proc-version", "run": "cat /proc/version", "expect": "Linux version"},
             {"series": "demo", "name": "debugfs-mounted", "run": "grep -q debugfs /proc/mounts && echo yes"},
             {"series": "demo", "name": "wrong", "run": "echo 42", "expect": "^43$"}]
    initrd = image.build_initramfs(ws, kernel_release=release, modules_dir=None, smoke=smoke, mode="guest")
    lines = []
    r = boot.boot(ws, mode="guest", kernel=real_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=120,
                  on_line=lines.append)
    got = {(c.classname, c.name): c.status for c in r.results}
    assert got == {("base.guest", "kernel-release"): "pass", ("base.guest", "modules-load"): "skip",
                   ("base.guest", "dmesg-clean"): "pass", ("demo.guest", "proc-version"): "pass",
                   ("demo.guest", "debugfs-mounted"): "pass", ("demo.guest", "wrong"): "fail",
                   ("after-checks.guest", "dmesg-clean"): "pass"}, r.message
    assert r.verdict == "fail" and any("KTAP version 1" in line for line in lines)
    assert r.outcome.returncode == 0  # powered itself off (ACPI), not stopped by the runner
    assert qemu.marked_pids(r.argv[r.argv.index("-name") + 1]) == []


def _broken_initrd(ws, init: bytes) -> Path:
    entries = image.busybox_entries() + image.base_entries() + [image.Entry("init", image.S_IFREG | 0o755, init)]
    return image.store(ws, image.pack(entries))


@pytest.mark.slow
def test_real_kernel_panics_when_init_exits(tmp_ws, tmp_path, real_kernel):
    ws = tmp_ws()
    initrd = _broken_initrd(ws, b"#!/bin/sh\necho going away\nexit 1\n")
    r = boot.boot(ws, mode="guest", kernel=real_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=120)
    assert r.verdict == "panic" and "Attempted to kill init" in r.message
    with pytest.raises(BootError):
        r.raise_for_verdict()


@pytest.mark.slow
def test_real_hung_guest_times_out_and_qemu_is_reaped(tmp_ws, tmp_path, real_kernel):
    ws = tmp_ws()
    initrd = _broken_initrd(ws, b"#!/bin/sh\necho hanging\nwhile :; do sleep 1; done\n")
    r = boot.boot(ws, mode="guest", kernel=real_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=15)
    assert r.verdict == "timeout" and r.duration < 25
    marker = r.argv[r.argv.index("-name") + 1]
    assert qemu.marked_pids(marker) == []


def _stage_modules(build: Path, stage: Path) -> list[Path]:
    """Stage every .ko of a build folder as `make modules_install INSTALL_MOD_PATH=stage` would."""
    import shutil
    import subprocess

    release = image.kernel_release(build)
    kos = sorted(build.rglob("*.ko"))
    mod_dir = stage / "lib/modules" / release
    mod_dir.mkdir(parents=True, exist_ok=True)
    for ko in kos:
        dest = mod_dir / "kernel" / ko.relative_to(build)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ko, dest)
    if shutil.which("depmod"):
        subprocess.run(["depmod", "-b", str(stage), release], check=True)
    return kos


def _check_modules(r, kos):
    mods = {c.name: c for c in r.results if c.name.startswith("module")}
    if kos:
        assert set(mods) == {f"module-{ko.name[:-3]}" for ko in kos}
    else:
        assert mods["modules-load"].status == "skip"
    for c in mods.values():
        assert c.status == "pass" or (c.status == "skip" and c.reason), (c.name, c.status, c.output)


@pytest.mark.slow
def test_real_guest_loads_the_builds_modules(tmp_ws, tmp_path, real_kernel):
    """Every .ko of the kernel's build folder, staged as modules_install would, loads in the guest
    (or is skipped when it drives hardware QEMU lacks, as x86_pkg_temp_thermal does)."""
    ws = tmp_ws()
    build = real_kernel.parents[3]  # <O=>/arch/x86/boot/bzImage
    kos = _stage_modules(build, tmp_path / "stage")
    initrd = image.build_initramfs(ws, kernel_release=image.kernel_release(build), modules_dir=tmp_path / "stage",
                                   smoke=[], mode="guest")
    r = boot.boot(ws, mode="guest", kernel=real_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=120)
    _check_modules(r, kos)
    assert r.verdict == "pass", r.message


@pytest.fixture(scope="session")
def real_dom0_kernel(request) -> Path:
    """KPT_TEST_DOM0_BZIMAGE if set, else the xen-dom0 profile's kernel (fixture `dom0_kernel`)."""
    if os.environ.get("KPT_TEST_DOM0_BZIMAGE"):
        return Path(os.environ["KPT_TEST_DOM0_BZIMAGE"])
    return Path(request.getfixturevalue("dom0_kernel"))


@pytest.mark.slow
def test_real_xen_dom0_boot_passes_the_dom0_checks_and_loads_backends(tmp_ws, tmp_path, real_dom0_kernel):
    """Debian's Xen under QEMU TCG, our kernel as PV dom0 with its modules (xen-netback...)."""
    from kpatch_tool.doctor import xen_binary

    assert xen_binary(), "xen-hypervisor-4.17-amd64 must be installed for this test"
    ws = tmp_ws()
    build = real_dom0_kernel.parents[3]
    kos = _stage_modules(build, tmp_path / "stage")
    smoke = [{"series": "demo", "name": "dom0-sees-xen", "where": "dom0", "run": "cat /sys/hypervisor/type",
              "expect": "^xen$"},
             {"series": "demo", "name": "guest-only", "where": "guest", "run": "false"}]
    initrd = image.build_initramfs(ws, kernel_release=image.kernel_release(build), modules_dir=tmp_path / "stage",
                                   smoke=smoke, mode="xen")
    r = boot.boot(ws, mode="xen", kernel=real_dom0_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=300)
    got = {(c.classname, c.name): c.status for c in r.results}
    for name in ("kernel-release", "xen-capabilities", "hypervisor-type", "xenbus", "xen-devices", "dmesg-clean"):
        assert got[("base.xen", name)] == "pass", (name, r.message)
    assert got[("demo.xen", "dom0-sees-xen")] == "pass" and got[("demo.xen", "guest-only")] == "skip"
    _check_modules(r, kos)
    assert r.verdict == "pass", r.message
    assert "-kernel" in r.argv and "xen" in r.argv[r.argv.index("-kernel") + 1]
    assert qemu.marked_pids(r.argv[r.argv.index("-name") + 1]) == []


@pytest.mark.slow
def test_real_xen_panic_under_noreboot_is_stopped_by_the_runner(tmp_ws, tmp_path, real_kernel):
    """A kernel Xen cannot start as dom0 (the guest profile has no PV support): Xen panics and,
    with `noreboot`, would hang forever; the runner sees "Panic on CPU" and stops QEMU."""
    ws = tmp_ws()
    initrd = image.build_initramfs(ws, kernel_release=qemu.bzimage_release(real_kernel), modules_dir=None,
                                   smoke=[], mode="xen")
    r = boot.boot(ws, mode="xen", kernel=real_kernel, initrd=initrd, run_dir=tmp_path / "run", timeout=120)
    if r.verdict == "pass":
        pytest.fail("this kernel booted as dom0; the test needs a kernel without Xen PV support")
    assert r.verdict == "panic" and "Could not construct domain 0" in r.message
    assert r.outcome.stopped == "panic" and r.duration < 60
    assert qemu.marked_pids(r.argv[r.argv.index("-name") + 1]) == []


def test_a_panic_caused_by_an_oops_quotes_the_oops(tmp_ws, tmp_path, fake):
    """The 6.1 dom0 oops (xen_dt_get_node) ends as init being killed: the verdict must name the BUG."""
    console = ("[    3.210819] BUG: kernel NULL pointer dereference, address: 0000000000000260\n"
               "[    3.210994] Oops: 0000 [#1] SMP\n"
               "[    3.343316] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009")
    kernel, initrd = fake(console, "hang")
    r = _boot(tmp_ws(), kernel, initrd, tmp_path / "run")
    assert r.verdict == "panic"
    assert "Attempted to kill init" in r.message and "NULL pointer dereference" in r.message
    with pytest.raises(BootError) as exc:
        r.raise_for_verdict()
    assert exc.value.exit_code == 6 and "address: 0000000000000260" in exc.value.message
