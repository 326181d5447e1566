"""QEMU command lines and the console runner.

The runner tests use a fake "qemu" (a shell script printing a console and then
hanging, as a panicked guest under Xen's noreboot does) so they are fast and
deterministic; real QEMU boots are in test_boot.py (slow).
"""

import gzip
import struct
import time
import uuid
from pathlib import Path

import pytest

from kpatch_tool import qemu
from kpatch_tool.errors import PrereqError, UsageError

KTAP_DONE = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: base\n    1..1\n    ok 1 a\nok 1 base\n"


def fake_qemu(tmp_path: Path, console: str, *, then: str = "hang", rc: int = 0) -> tuple[Path, str]:
    """A script standing in for QEMU: prints console, then hangs (in a child `sleep`) or exits rc.

    The sleep's argument is unique so a test can prove the whole process group was reaped."""
    token = f"{1000 + uuid.uuid4().int % 100000}.{uuid.uuid4().int % 1000:03d}"
    body = "".join(f"echo '{line}'\n" for line in console.splitlines())
    tail = f"sleep {token}\n" if then == "hang" else f"exit {rc}\n"
    script = tmp_path / f"fake-qemu-{uuid.uuid4().hex[:6]}"
    script.write_text("#!/bin/sh\n" + body + tail)
    script.chmod(0o755)
    return script, token


def sleepers(token: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _run(script, tmp_path, timeout=20.0, grace=0.5):
    marker = qemu.new_marker()
    argv = [str(script), "-name", marker]
    out = qemu.run(argv, log=tmp_path / "console.log", timeout=timeout, marker=marker, grace=grace)
    return out, marker


# ---------------------------------------------------------------- command lines

def test_guest_command_line_has_the_documented_shape():
    argv = qemu.guest_argv(Path("/k/bzImage"), Path("/i/initrd.gz"), marker="kpt-x", append="quiet", use_kvm=False)
    s = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-name kpt-x" in s and "-accel tcg" in s and "-m 512" in s
    assert "-nographic" in argv and "-no-reboot" in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 quiet"
    assert argv[argv.index("-kernel") + 1] == "/k/bzImage" and argv[argv.index("-initrd") + 1] == "/i/initrd.gz"
    assert "-accel kvm -cpu host" in " ".join(qemu.guest_argv(Path("k"), Path("i"), marker="m", use_kvm=True))


def test_xen_command_line_matches_facts_and_doubles_commas():
    argv = qemu.xen_argv(Path("/c/xen-4.17"), Path("/b/bz,Image"), Path("/i/initramfs.cpio.gz"), marker="kpt-x",
                         use_kvm=False)
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-kernel") + 1] == "/c/xen-4.17"
    assert argv[argv.index("-append") + 1] == (
        "console=com1 dom0_mem=384M loglvl=all guest_loglvl=all noreboot console_timestamps=boot"
        " bootscrub=false")
    assert argv[argv.index("-initrd") + 1] == (
        "/b/bz,,Image console=hvc0 earlyprintk=xen panic=-1,/i/initramfs.cpio.gz")
    with pytest.raises(UsageError, match="spaces"):
        qemu.xen_argv(Path("/x"), Path("/a b/bzImage"), Path("/i"), marker="m", use_kvm=False)


def test_kvm_probe_runs_once_per_process(monkeypatch):
    from kpatch_tool import doctor

    calls = []
    monkeypatch.setattr(doctor, "kvm_usable", lambda: calls.append(1) or (False, "no vmx"))
    qemu.kvm.cache_clear()
    try:
        assert qemu.accel_args() == ["-accel", "tcg"]
        assert qemu.kvm() == (False, "no vmx")
        assert len(calls) == 1
    finally:
        qemu.kvm.cache_clear()


def _fake_bzimage(path: Path, version: bytes = b"6.1.0-kpt (root@h) #1 SMP") -> Path:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x300)
    data[0x500:0x500 + len(version)] = version
    path.write_bytes(bytes(data))
    return path


def test_bzimage_header_check_and_release(tmp_path):
    assert qemu.bzimage_release(_fake_bzimage(tmp_path / "bz")) == "6.1.0-kpt"
    (tmp_path / "text").write_text("not a kernel\n")
    with pytest.raises(UsageError, match="not an x86 bzImage"):
        qemu.check_bzimage(tmp_path / "text")
    with pytest.raises(UsageError, match="cannot read"):
        qemu.check_bzimage(tmp_path / "missing")


def test_initramfs_larger_than_memory_is_refused(tmp_path):
    big = tmp_path / "big.cpio.gz"
    # A gzip whose trailer says it unpacks to 600 MiB.
    big.write_bytes(gzip.compress(b"x")[:-4] + struct.pack("<I", 600 << 20))
    with pytest.raises(UsageError, match="more than the guest's 512 MiB"):
        qemu.check_fits(big, 512, "the guest")
    qemu.check_fits(big, 1024, "the guest")


def test_xen_binary_is_gunzipped_into_the_cache_once(tmp_ws, tmp_path):
    ws = tmp_ws()
    gz = tmp_path / "xen-4.17-amd64.gz"
    gz.write_bytes(gzip.compress(b"\x7fELF" + b"\0" * 100))
    a = qemu.xen_binary(ws, gz)
    assert a.parent == ws.cache_dir / "xen" and a.read_bytes().startswith(b"\x7fELF")
    mtime = a.stat().st_mtime_ns
    assert qemu.xen_binary(ws, gz) == a and a.stat().st_mtime_ns == mtime
    with pytest.raises(PrereqError, match="not found"):
        qemu.xen_binary(ws, tmp_path / "no-xen.gz")
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(UsageError, match="not a Xen ELF"):
        qemu.xen_binary(ws, tmp_path / "junk")


# ---------------------------------------------------------------- the runner (fake QEMU)

def test_panic_stops_a_hanging_qemu_and_reaps_it(tmp_path):
    script, token = fake_qemu(tmp_path, "booting\n[    1.5] Kernel panic - not syncing: Attempted to kill init!")
    t0 = time.monotonic()
    out, marker = _run(script, tmp_path)
    assert time.monotonic() - t0 < 10
    assert out.panic and "Attempted to kill init" in out.panic
    assert out.stopped == "panic" and not out.timed_out
    assert qemu.marked_pids(marker) == [] and sleepers(token) == []
    assert "Kernel panic" in (tmp_path / "console.log").read_text()


def test_xen_panic_marker_is_seen_behind_its_prefixes(tmp_path):
    script, _ = fake_qemu(tmp_path, "(XEN) [    3.1] ****\n(XEN) [    3.1] Panic on CPU 0:\n(XEN) [    3.1] DOM0 oops")
    out, _ = _run(script, tmp_path)
    assert out.panic == "Panic on CPU 0: DOM0 oops" and out.stopped == "panic"


def test_hung_guest_times_out_and_leaves_no_process(tmp_path):
    script, token = fake_qemu(tmp_path, "booting")
    t0 = time.monotonic()
    out, marker = _run(script, tmp_path, timeout=1.5)
    assert out.timed_out and not out.plan_seen
    assert time.monotonic() - t0 < 6
    assert qemu.marked_pids(marker) == [] and sleepers(token) == []


def test_complete_ktap_stops_a_guest_that_does_not_power_off(tmp_path):
    script, token = fake_qemu(tmp_path, KTAP_DONE)
    out, marker = _run(script, tmp_path)
    assert out.ktap_done and out.stopped == "ktap-done" and not out.timed_out
    assert sleepers(token) == []


def test_oops_and_diagnostics_are_told_apart(tmp_path):
    console = "[    2.0] BUG: kernel NULL pointer dereference, address: 0\n    # BUG: printed by a check\n" + KTAP_DONE
    script, _ = fake_qemu(tmp_path, console, then="exit")
    out, _ = _run(script, tmp_path)
    assert out.oopses == ["[    2.0] BUG: kernel NULL pointer dereference, address: 0"]
    assert out.panic is None and out.ktap_done and out.stopped is None


def test_missing_qemu_is_a_prereq_error(tmp_path):
    with pytest.raises(PrereqError, match="not found"):
        qemu.run([str(tmp_path / "no-qemu")], log=tmp_path / "c.log", timeout=5, marker="kpt-none")


def _wait_started(token: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not sleepers(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(token), "fake QEMU did not start"


def test_ctrl_c_reaps_qemu(tmp_path):
    """Ctrl-C (SIGINT to kpt) while the fake QEMU hangs: QEMU's whole process group is gone after."""
    import signal
    import subprocess
    import sys

    script, token = fake_qemu(tmp_path, "booting")
    marker = qemu.new_marker()
    code = (f"from kpatch_tool import qemu\nfrom pathlib import Path\n"
            f"qemu.run([{str(script)!r}, '-name', {marker!r}], log=Path({str(tmp_path / 'c.log')!r}), "
            f"timeout=60, marker={marker!r})\n")
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    _wait_started(token, 10)
    child.send_signal(signal.SIGINT)
    # Generous: the full test run once saw this child take over 15 s on a busy host.
    _, err = child.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert qemu.marked_pids(marker) == [] and sleepers(token) == []


def test_sigterm_to_kpt_boot_reaps_qemu_and_exits_130(tmp_path):
    """A CI runner cancelling the job (SIGTERM to the kpt CLI) cleans up like Ctrl-C: exit 130, no QEMU left."""
    import os
    import signal
    import subprocess
    import sys

    script, token = fake_qemu(tmp_path, "booting")
    (tmp_path / "bzImage").write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 16)
    (tmp_path / "initrd").write_bytes(b"x")
    env = dict(os.environ, KPT_QEMU=str(script))
    child = subprocess.Popen([sys.executable, "-m", "kpatch_tool.cli", "boot", "--kernel", str(tmp_path / "bzImage"),
                              "--initrd", str(tmp_path / "initrd"), "--out", str(tmp_path / "run"), "--timeout", "60"],
                             stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    _wait_started(token, 30)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 130, err
    assert "interrupted" in err
    assert sleepers(token) == []
