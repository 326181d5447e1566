"""The initramfs: deterministic cpio, contents, smoke tables, and the rendered /init (fast)."""

import gzip
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kpatch_tool import image, ktap
from kpatch_tool.errors import UsageError

SMOKE = [
    {"series": "s1", "name": "hello", "run": "echo 'hi there'", "expect": "^hi there$"},
    {"series": "s1", "name": "bad", "run": "echo no; exit 3"},
    {"series": "s1", "name": "mismatch", "run": "echo nope", "expect": "^yes$"},
    {"series": "s1", "name": "slow", "run": "sleep 5", "timeout": 1},
    # A grandchild that outlives its shell and holds the output open (dd stuck on a device).
    {"series": "s1", "name": "stuck-reader", "run": "(sleep 300; echo late) & sleep 300", "timeout": 1},
    {"series": "s1", "name": "self-skip", "run": "exit 77"},
    {"series": "s2", "name": "dom0-only", "run": "true", "where": "dom0"},
]


def _build(ws, **kw):
    args = dict(kernel_release="6.1.0-kpt", modules_dir=None, smoke=SMOKE, mode="guest")
    args.update(kw)
    return image.build_initramfs(ws, **args)


def _list(path: Path, verbose=False) -> str:
    return subprocess.run(["cpio", "-itv" if verbose else "-it"], input=gzip.decompress(path.read_bytes()),
                          capture_output=True, check=True).stdout.decode()


def test_same_inputs_give_the_same_bytes_and_the_cached_file(tmp_ws):
    ws = tmp_ws()
    a = _build(ws)
    data = a.read_bytes()
    a.unlink()
    b = _build(ws)
    assert a == b and b.read_bytes() == data
    assert b.parent == ws.cache_dir / "images"
    assert _build(ws) == b  # reused


def test_different_checks_give_a_different_image(tmp_ws):
    ws = tmp_ws()
    assert _build(ws) != _build(ws, smoke=SMOKE[:1])
    assert _build(ws) != _build(ws, kernel_release="6.1.1")


def test_archive_lists_console_node_init_and_busybox(tmp_ws):
    path = _build(tmp_ws())
    names = _list(path).split()
    for want in ("dev/console", "init", "bin/busybox", "bin/sh", "sbin/poweroff", "usr/bin/timeout", "proc", "sys"):
        assert want in names
    assert names == sorted(names)
    long = {line.split()[-1]: line for line in _list(path, verbose=True).splitlines() if line.strip()}
    assert long["dev/console"].startswith("crw") and "5,   1" in long["dev/console"]
    assert long["init"].startswith("-rwxr-xr-x")
    assert "Jan  1  1970" in long["init"]  # mtime 0


def test_modules_from_a_staging_folder_are_included_and_loaded(tmp_ws, tmp_path):
    ws = tmp_ws()
    stage = tmp_path / "stage"
    kdir = stage / "lib/modules/6.1.0-kpt/kernel/drivers/net"
    kdir.mkdir(parents=True)
    (kdir / "xen-netback.ko").write_bytes(b"\x7fELF fake module")
    (stage / "lib/modules/6.1.0-kpt/modules.dep").write_text("kernel/drivers/net/xen-netback.ko:\n")
    (stage / "lib/modules/6.1.0-kpt/build").symlink_to("/nonexistent")
    path = _build(ws, modules_dir=stage)
    names = _list(path).split()
    assert "lib/modules/6.1.0-kpt/kernel/drivers/net/xen-netback.ko" in names
    assert "lib/modules/6.1.0-kpt/build" not in names
    init = image.render_init(ws, mode="guest", kernel_release="6.1.0-kpt", groups=image.plan_groups(
        "6.1.0-kpt", ["/lib/modules/6.1.0-kpt/kernel/drivers/net/xen-netback.ko"], True, [], "guest"))
    assert "module-xen-netback" in init and "modprobe xen-netback" in init


def test_smoke_tables_are_read_from_series_toml(tmp_ws):
    ws = tmp_ws()
    d = ws.patches_dir / "netback-per-vif"
    d.mkdir(parents=True)
    (d / "series.toml").write_text(
        'name = "netback-per-vif"\n[[smoke]]\nname = "vifs"\nwhere = "dom0"\nrun = "ls /sys/bus/xen-backend"\n'
        'expect = "vif"\ntimeout = 20\n')
    (sm,) = image.load_smoke(ws, ["netback-per-vif"])
    assert sm == {"series": "netback-per-vif", "name": "vifs", "where": "dom0", "run": "ls /sys/bus/xen-backend",
                  "expect": "vif", "timeout": 20, "skip": "", "needs": []}


def test_a_later_series_replaces_or_skips_a_dependency_check_of_the_same_name(tmp_ws):
    ws = tmp_ws()
    for name, body in [("base", '[[smoke]]\nname = "maps"\nwhere = "dom0"\nrun = "count gntdev"\n'
                                 '[[smoke]]\nname = "net"\nwhere = "domU"\nrun = "ping"\n'
                                 '[[smoke]]\nname = "maps"\nwhere = "domU"\nrun = "other place"\n'),
                       ("variant", '[[smoke]]\nname = "maps"\nwhere = "dom0"\nrun = "count privcmd"\n'
                                   '[[smoke]]\nname = "net"\nwhere = "domU"\nskip = "no network here"\n')]:
        (ws.patches_dir / name).mkdir(parents=True)
        (ws.patches_dir / name / "series.toml").write_text(f'name = "{name}"\n' + body)
    got = [(c["series"], c["where"], c["name"], c["run"], c["skip"]) for c in image.load_smoke(ws, ["base", "variant"])]
    assert got == [("base", "domU", "maps", "other place", ""),
                   ("variant", "dom0", "maps", "count privcmd", ""),
                   ("variant", "domU", "net", "true", "no network here")]
    # and the skip reaches the KTAP plan as a skip, not a pass
    groups = image.plan_groups("6.1.0-kpt", [], False, image.load_smoke(ws, ["base", "variant"]), "domU")
    assert any(c["name"] == "net" and c["skip"] == "no network here" for g in groups for c in g["checks"])


@pytest.mark.parametrize("bad, msg", [
    ({"name": "x"}, "needs 'name' and 'run'"),
    ({"name": "x", "run": "true", "where": "host"}, "where = 'host'"),
    ({"name": "x", "run": "true", "expect": "("}, "not a regex"),
    ({"name": "x y", "run": "true"}, "KTAP test name"),
    ({"name": "x", "skip": 1}, "skip must be a string"),
])
def test_bad_smoke_tables_name_the_file(tmp_ws, bad, msg):
    ws = tmp_ws()
    with pytest.raises(UsageError, match=msg):
        image.normalise_smoke(bad, series="s", where_from="patches/s/series.toml [[smoke]] #1")


def test_missing_series_is_a_usage_error(tmp_ws):
    with pytest.raises(UsageError, match="series 'nope'"):
        image.load_smoke(tmp_ws(), ["nope"])


def test_rendered_init_is_valid_shell_and_carries_release_and_checks(tmp_ws):
    ws = tmp_ws()
    groups = image.plan_groups("6.1.0-kpt", [], False, SMOKE, "xen")
    text = image.render_init(ws, mode="xen", kernel_release="6.1.0-kpt", groups=groups)
    subprocess.run(["sh", "-n"], input=text.encode(), check=True)
    assert "'^6\\.1\\.0-kpt$'" in text
    assert [g["name"] for g in groups] == ["base", "s1", "s2", "after-checks"]
    base = [c["name"] for c in groups[0]["checks"]]
    assert base[:2] == ["kernel-release", "modules-load"]
    assert {"xen-capabilities", "hypervisor-type", "xenbus", "xen-devices"} <= set(base)
    assert base[-1] == "dmesg-clean"
    # Again once every check ran: what the series' checks made the kernel say.
    assert [c["name"] for c in groups[-1]["checks"]] == ["dmesg-clean"]
    # xen mode runs dom0 checks; guest-only checks are listed as skipped
    assert groups[2]["checks"][0]["skip"] == ""
    assert "not in dom0" in groups[1]["checks"][0]["skip"]
    assert "poweroff -f" in text and "reboot -f" in text


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="runs /init in a chroot with its own mount and PID namespaces (needs root)")
def test_init_prints_ktap_verdicts_when_run(tmp_ws, tmp_path):
    """Runs the real /init from the image in a chroot (new mount + PID namespace) instead of a VM:
    the shell logic (timeouts, expect, exit 77, quoting) is what is under test; poweroff in a
    PID namespace ends only that namespace. dmesg is replaced by a stub, since the kernel log
    (and `dmesg -n`) is not namespaced and belongs to the host."""
    ws = tmp_ws()
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(_build(ws, kernel_release=os.uname().release)
                                                                       .read_bytes()), cwd=root, check=True)
    (root / "bin/dmesg").unlink()
    (root / "bin/dmesg").write_text("#!/bin/sh\nexit 0\n")
    (root / "bin/dmesg").chmod(0o755)
    res = subprocess.run(["unshare", "--mount", "--pid", "--fork", "chroot", str(root), "/init"],
                         capture_output=True, text=True, timeout=60)
    k = ktap.parse(res.stdout)
    assert k.complete, res.stdout + res.stderr
    got = {path[-1]: (t.status, t.reason) for path, t in k.leaves()}
    assert got["kernel-release"] == ("pass", "")
    assert got["hello"] == ("pass", "")
    assert got["bad"] == ("fail", "exit status 3")
    assert got["mismatch"] == ("fail", "output does not match /^yes$/")
    assert got["slow"] == ("fail", "timed out after 1s")
    assert got["stuck-reader"] == ("fail", "timed out after 1s")
    assert got["self-skip"][0] == "skip"
    assert got["dom0-only"][0] == "skip"
    assert got["dmesg-clean"] == ("pass", "")


def test_the_series_model_and_the_image_agree_on_skip_and_the_timeout_default(tmp_ws):
    """Two live bugs of five parsers: skip taken by one and refused by another, and a
    timeout default of 60 in one and 30 in the other."""
    from kpatch_tool import series

    ws = tmp_ws()
    (ws.patches_dir / "s").mkdir()
    (ws.patches_dir / "s" / "series.toml").write_text(
        'name = "s"\n[[smoke]]\nname = "plain"\nrun = "true"\n'
        '[[smoke]]\nname = "gone"\nwhere = "domU"\nskip = "not on this variant"\n')
    model = {t.name: t for t in series.load_series(ws, "s").smoke}
    checks = {c["name"]: c for c in image.load_smoke(ws, ["s"])}
    assert model["plain"].timeout == checks["plain"]["timeout"] == series.SMOKE_TIMEOUT
    assert model["gone"].skip == checks["gone"]["skip"] == "not on this variant"


def test_a_check_that_needs_a_domu_is_skipped_with_the_reason_in_xen_mode(project_ws):
    """`kpt ci --mode xen` of netback-per-vif ran its vif checks with no domU: 5 false failures."""
    checks = image.load_smoke(project_ws, ["netback-per-vif"])
    dom0 = [c for c in checks if c["where"] == "dom0"]
    assert dom0 and all(c["needs"] == ["domU"] for c in dom0)
    groups = image.plan_groups("6.1.0-kpt", [], False, checks, "xen")
    planned = {c["name"]: c for g in groups for c in g["checks"]}
    assert all("needs a domU" in planned[c["name"]]["skip"] for c in dom0)
    # In the nested run, dom0 runs them.
    from kpatch_tool import nested

    text = nested.render_dom0_init(project_ws, checks)
    assert "vif-two-queues" in text and "needs a domU" not in text


def test_needs_names_only_known_things(tmp_ws):
    from kpatch_tool import series

    ws = tmp_ws()
    (ws.patches_dir / "s").mkdir()
    (ws.patches_dir / "s" / "series.toml").write_text('name = "s"\n[[smoke]]\nname = "x"\nrun = "true"\nneeds = ["gpu"]\n')
    with pytest.raises(UsageError, match=r"smoke\[0\]\.needs.*'gpu'"):
        series.load_series(ws, "s")


@pytest.mark.parametrize("line, clean", [
    ("[   12.3] vif vif-0 vif0: Grant still in use by backend domain", False),
    ("[   12.3] WARNING: CPU: 1 PID: 34 at drivers/virtio/virtio.c:300 virtio_dev_remove+0x5e/0x70", False),
    ("[   12.3] WARNING: leaking g.e. and page still in use!", False),
    ("[   12.3] BUG: kernel NULL pointer dereference, address: 0000000000000000", False),
    ("[   12.3] xen_netfront: Initialising Xen virtual ethernet driver", True),
    ("[    0.2] Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/"
     "admin-guide/hw-vuln/srso.html for mitigation options.", True),
])
def test_dmesg_clean_catches_warnings_bugs_and_grants_still_in_use(tmp_path, line, clean):
    """The check's own command, run by sh with a dmesg that prints the line."""
    (tmp_path / "dmesg").write_text(f"#!/bin/sh\necho '{line}'\n")
    (tmp_path / "dmesg").chmod(0o755)
    check = image.dmesg_clean_check()
    res = subprocess.run(["sh", "-c", check["run"]], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert (res.returncode == 0) is clean, res.stdout
    assert ("clean" in res.stdout) is clean


def test_on_base_form_of_the_netback_checks(project_ws):
    """On the base the rate check expects the bug (over the limit); checks of what only
    the series adds are skipped rather than failed."""
    series = {c["name"]: c for c in image.load_smoke(project_ws, ["netback-per-vif"])}
    base = {c["name"]: c for c in image.load_smoke(project_ws, ["netback-per-vif"], on_base=True)}
    assert series["rate-limit-two-queues"]["expect"] == "verdict: within-limit"
    assert base["rate-limit-two-queues"]["expect"] == "verdict: over-limit"
    assert base["ethtool-counters"]["skip"].startswith("on the base:") and not series["ethtool-counters"]["skip"]
    assert base["vif-two-queues"] == series["vif-two-queues"]


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]])
def test_checks_started_early_keep_their_daemons_timeouts_and_order(tmp_path, shell):
    """The check helper (templates/ktap-check.sh.j2) run by dash (dom0's checks) and by
    busybox's sh (dom0's init, the guests): a check started early reports in its turn, a
    daemon it left behind outlives its timeout, and an early check that hangs is killed."""
    from kpatch_tool import templating

    flag = tmp_path / "daemon-alive"
    script = templating.env().from_string(
        '{% include "ktap-check.sh.j2" %}\n'
        f"check_start e1 1 '(sleep 2; echo yes >{flag}) & echo started'\n"
        "check_start e2 1 'sleep 30'\n"
        "check \"\" 1 first 5 '^hi$' '' 'echo hi'\n"
        "sleep 1.5\n"
        "check_end \"\" 2 daemon 1 started e1\n"
        "check_end \"\" 3 hung 1 '' e2\n"
        f"sleep 1; cat {flag}\n").render()
    start = time.monotonic()
    res = subprocess.run([*shell, "-c", script], capture_output=True, text=True, timeout=60)
    k = ktap.parse("KTAP version 1\n1..3\n" + res.stdout)
    assert [(t.name, t.status, t.reason) for t in k.tests] == [
        ("first", "pass", ""), ("daemon", "pass", ""), ("hung", "fail", "timed out after 1s")], res.stdout
    assert res.stdout.rstrip().endswith("yes")  # the daemon was not killed with its check's timer
    assert time.monotonic() - start < 20
    # Every result carries its check's wall time, which results.json keeps apart.
    assert all(t.diagnostics[-1].startswith("kpt-time: ") for t in k.tests)
