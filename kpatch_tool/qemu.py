"""QEMU: command lines for the boot modes, KVM or TCG, and a runner that watches the console.

The runner streams the serial console into a log, follows the KTAP progress
and looks for panic and oops markers. It stops QEMU itself a few seconds after
the last KTAP result or a panic (Xen's `noreboot` otherwise keeps a crashed or
halted machine running forever) and always reaps it: on timeout, error and
Ctrl-C. Every QEMU gets `-name kpt-<uuid>` so that it can be found (and proven
gone) by that marker.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import shutil
import signal
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import PrereqError, UsageError
from kpatch_tool.ktap import Progress

QEMU = "qemu-system-x86_64"
GUEST_MEMORY = 512  # MiB
XEN_MEMORY = 1024  # MiB, of which dom0 gets DOM0_MEM
DOM0_MEM = 384
GUEST_APPEND = "console=ttyS0 panic=-1"
DOM0_APPEND = "console=hvc0 earlyprintk=xen panic=-1"
# bootscrub=false: Xen scrubs the free RAM of a real machine in the background while
# dom0 boots (bootscrub=idle); under TCG that is a vCPU's worth of memset the host
# runs beside dom0's and the domU's boots, for memory no earlier tenant ever held.
XEN_APPEND = ("console=com1 dom0_mem={dom0}M loglvl=all guest_loglvl=all noreboot console_timestamps=boot"
              " bootscrub=false")
STOP_GRACE = 3.0  # seconds QEMU gets to exit by itself after the verdict is known

# Markers are matched at the start of a console line, after the printk and Xen
# prefixes, so a check printing the word "BUG:" in a KTAP diagnostic (`# ...`)
# is not mistaken for the kernel's own report.
_PREFIX = re.compile(r"^(?:\(XEN\) ?)?(?:\[\s*\d+\.\d+\] ?)?\s*")
PANIC_RE = re.compile(r"^(Kernel panic - not syncing|Panic on CPU \d+|Hardware Dom0 crashed)")
_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)")
OOPS_RE = re.compile(r"^(Oops:|BUG:|kernel BUG at|general protection fault|WARNING: CPU:)")


def qemu_binary() -> str:
    # KPT_QEMU lets tests substitute a fake QEMU (a script) without touching PATH.
    return os.environ.get("KPT_QEMU", QEMU)


@functools.cache
def kvm() -> tuple[bool, str]:
    """Does KVM really work here? Probed once per process (the probe boots a tiny guest)."""
    from kpatch_tool.doctor import kvm_usable

    return kvm_usable()


def accel_args(use_kvm: bool | None = None) -> list[str]:
    if use_kvm is None:
        use_kvm = kvm()[0]
    return ["-accel", "kvm", "-cpu", "host"] if use_kvm else ["-accel", "tcg"]


def check_bzimage(path: Path) -> Path:
    """A clear error for a file that is not an x86 boot image, before QEMU says something vaguer."""
    path = Path(path)
    from kpatch_tool.userfile import read_bytes

    head = read_bytes(path, "kernel")[:0x210]
    if len(head) < 0x206 or head[0x202:0x206] != b"HdrS":
        raise UsageError(f"{path}: not an x86 bzImage (no 'HdrS' boot header; pass arch/x86/boot/bzImage)")
    return path


def bzimage_release(path: Path) -> str | None:
    """The `uname -r` a bzImage will report, from its boot header's kernel_version string."""
    with open(check_bzimage(path), "rb") as fh:
        head = fh.read(0x4000 + 0x200)
    (ptr,) = struct.unpack_from("<H", head, 0x20E)
    if not ptr or ptr + 0x200 >= len(head):
        return None
    text = head[ptr + 0x200:ptr + 0x200 + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split()[0] if text.strip() else None


def initrd_size(path: Path) -> int:
    """Bytes the initramfs needs in guest memory: compressed plus unpacked (gzip's ISIZE)."""
    path = Path(path)
    from kpatch_tool.userfile import read_bytes

    if not path.is_file():
        read_bytes(path, "initramfs")  # names what it is (missing, a folder, a FIFO) instead of waiting on it
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the initramfs ({exc.strerror})") from None
    with open(path, "rb") as fh:
        magic = fh.read(2)
        if magic == b"\x1f\x8b" and size >= 18:
            fh.seek(-4, os.SEEK_END)
            return size + struct.unpack("<I", fh.read(4))[0]
    return 2 * size


def check_fits(initrd: Path, memory_mib: int, what: str) -> None:
    # The kernel itself and the page cache need room too; 64 MiB is generous for tinyconfig.
    need = initrd_size(initrd)
    if need + (64 << 20) > memory_mib << 20:
        raise UsageError(f"{initrd}: initramfs needs {need >> 20} MiB unpacked, more than {what}'s "
                         f"{memory_mib} MiB allows (raise the memory or shrink the image)")


def xen_binary(ws, xen: Path | None = None) -> Path:
    """An ELF Xen for QEMU's multiboot loader: a given one, or Debian's .gz unpacked into the cache."""
    if xen is None:
        from kpatch_tool.doctor import xen_binary as find

        xen = find()
        if xen is None:
            raise PrereqError("no Xen hypervisor (/boot/xen-4.*-amd64.gz): apt-get install xen-hypervisor-4.17-amd64")
    xen = Path(xen)
    if not xen.is_file():
        raise PrereqError(f"{xen}: Xen hypervisor not found (apt-get install xen-hypervisor-4.17-amd64, or --xen PATH)")
    data = xen.read_bytes()
    if data[:2] == b"\x1f\x8b":
        digest = hashlib.sha256(data).hexdigest()[:16]
        out = ws.cache_dir / "xen" / f"{xen.name.removesuffix('.gz')}-{digest}"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(gzip.decompress(data))
            os.replace(tmp, out)
        data, xen = out.read_bytes()[:4], out
    if data[:4] != b"\x7fELF":
        raise UsageError(f"{xen}: not a Xen ELF image (QEMU's multiboot loader needs the ELF, or Debian's .gz)")
    return xen


def multiboot_escape(s: str | os.PathLike) -> str:
    s = os.fspath(s)
    if " " in s:
        raise UsageError(f"{s}: a path with spaces cannot be a multiboot module (Xen mode)")
    # QEMU splits -initrd at commas into multiboot modules; a literal comma is doubled.
    return s.replace(",", ",,")


def new_marker() -> str:
    return f"kpt-{uuid.uuid4().hex[:12]}"


def guest_argv(kernel: Path, initrd: Path, *, marker: str, append: str = "", memory: int = GUEST_MEMORY,
               use_kvm: bool | None = None, extra: Sequence[str] = ()) -> list[str]:
    cmdline = GUEST_APPEND + (f" {append}" if append else "")
    return [qemu_binary(), "-name", marker, *accel_args(use_kvm), "-m", str(memory), "-nographic", "-no-reboot",
            "-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd), "-append", cmdline, *extra]


def xen_argv(xen: Path, kernel: Path, initrd: Path, *, marker: str, append: str = "", xen_append: str = "",
             memory: int = XEN_MEMORY, dom0_mem: int = DOM0_MEM, use_kvm: bool | None = None,
             extra: Sequence[str] = ()) -> list[str]:
    xen_cmd = XEN_APPEND.format(dom0=dom0_mem) + (f" {xen_append}" if xen_append else "")
    dom0_cmd = DOM0_APPEND + (f" {append}" if append else "")
    modules = f"{multiboot_escape(kernel)} {dom0_cmd.replace(',', ',,')},{multiboot_escape(initrd)}"
    return [qemu_binary(), "-name", marker, *accel_args(use_kvm), "-m", str(memory), "-nographic", "-no-reboot",
            "-kernel", os.fspath(xen), "-append", xen_cmd, "-initrd", modules, *extra]


# ---------------------------------------------------------------- the runner

@dataclass
class RunOutcome:
    returncode: int | None
    duration: float
    timed_out: bool
    panic: str | None = None  # the first panic line
    oopses: list[str] = field(default_factory=list)
    plan_seen: bool = False
    ktap_done: bool = False
    done_after: float | None = None  # seconds from start to the last KTAP result
    stopped: str | None = None  # why we stopped QEMU ourselves: "ktap-done" or "panic"
    tail: list[str] = field(default_factory=list)  # the last console lines


def marked_pids(marker: str) -> list[int]:
    """PIDs whose command line carries marker (our QEMU, or a fake one in tests)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd.split(b"\0"):
            pids.append(int(d.name))
    return pids


def kill_marked(marker: str, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, every process (group) started with marker."""
    def signal_all(sig):
        for pid in marked_pids(marker):
            try:
                pgid = os.getpgid(pid)
                # proc.stream makes QEMU a session leader; kill its group, never ours.
                if pgid == pid and pgid != os.getpgrp():
                    os.killpg(pgid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_all(signal.SIGKILL)


def run(argv: Sequence[str], *, log: Path, timeout: float, marker: str,
        on_line: Callable[[str], object] | None = None, grace: float = STOP_GRACE,
        tail_lines: int = 30) -> RunOutcome:
    """Run QEMU (argv carries `-name marker`), watching its console until a verdict or timeout."""
    if not shutil.which(argv[0]):
        raise PrereqError(f"{argv[0]}: not found (apt-get install qemu-system-x86)")
    progress = Progress()
    tail: deque[str] = deque(maxlen=tail_lines)
    out = RunOutcome(None, 0.0, False)
    timer: threading.Timer | None = None
    lock = threading.Lock()
    start = time.monotonic()

    def stop(reason: str) -> None:
        if marked_pids(marker):
            out.stopped = reason
            kill_marked(marker)

    def arm(reason: str) -> None:
        nonlocal timer
        with lock:
            if timer is None:
                timer = threading.Timer(grace, stop, args=(reason,))
                timer.daemon = True
                timer.start()

    def watch(line: str) -> bool:
        if on_line:
            on_line(line)
        tail.append(_ANSI.sub("", line))  # SeaBIOS clears the screen; keep messages readable
        body = _PREFIX.sub("", line, count=1)
        if out.panic and out.panic.endswith(":") and body.strip("* "):
            # Xen says why on the line after "Panic on CPU 0:".
            out.panic += " " + body.strip()
        if PANIC_RE.match(body):
            out.panic = out.panic or body.strip()
            arm("panic")
        elif OOPS_RE.match(body):
            out.oopses.append(line.strip())
        if progress.feed(line) and out.done_after is None:
            out.done_after = time.monotonic() - start
            arm("ktap-done")
        return False

    try:
        res = proc.stream(list(argv), on_line=watch, timeout=timeout, log=log)
    finally:
        if timer is not None:
            timer.cancel()
        # Belt and braces: nothing carrying our marker survives the run.
        if marked_pids(marker):
            kill_marked(marker, grace=1.0)
    out.returncode, out.duration, out.timed_out = res.returncode, res.duration, res.timed_out
    out.plan_seen, out.ktap_done = progress.seen_plan, out.done_after is not None
    out.tail = list(tail)
    return out
