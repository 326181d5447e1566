"""Host prerequisites: what each stage needs, and the apt-get line that fixes it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool.workspace import Workspace

MIN_GIT = (2, 30)
MIN_FREE_GB = 20


@dataclass
class Check:
    name: str
    status: str  # ok, missing, warn
    detail: str
    fix: str = ""
    required: bool = True


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "missing" and c.required]


# tool, Debian package, what needs it, required
TOOLS = [
    ("git", "git", "every stage", True),
    ("gcc", "build-essential", "kernel builds", True),
    ("make", "build-essential", "kernel builds", True),
    ("flex", "flex", "kernel builds (kconfig)", True),
    ("bison", "bison", "kernel builds (kconfig)", True),
    ("bc", "bc", "kernel builds", True),
    ("ccache", "ccache", "cached kernel builds", True),
    ("xz", "xz-utils", "importing linux-source tarballs", True),
    ("cpio", "cpio", "initramfs (kernel's own gen_init_cpio is not used)", False),
    ("perl", "perl", "checkpatch.pl, get_maintainer.pl", True),
    ("qemu-system-x86_64", "qemu-system-x86", "booting kernels", True),
    ("dpkg-source", "dpkg-dev", "importing Debian source packages (qemu, xen)", False),
    ("debootstrap", "debootstrap", "the dom0 root filesystem (xen+domU mode)", False),
    ("git-send-email", "git-email", "kpt mail --send", False),
    ("ninja", "ninja-build", "kpt build qemu", False),
]


def _tool_check(tool: str, package: str, purpose: str, required: bool, env_path: str | None) -> Check:
    found = shutil.which(tool, path=env_path)
    if not found and tool == "git-send-email":
        # git's subcommands live in its exec path, not on PATH.
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip() if shutil.which("git", path=env_path) else ""
        cand = Path(exec_path) / "git-send-email" if exec_path else None
        found = str(cand) if cand and cand.exists() else None
    if found:
        return Check(tool, "ok", f"{found} ({purpose})", required=required)
    return Check(tool, "missing", f"not on PATH; needed for {purpose}", f"apt-get install -y {package}", required=required)


def _git_version(env_path: str | None) -> Check:
    g = shutil.which("git", path=env_path)
    if not g:
        return Check("git version", "missing", "git not found", "apt-get install -y git")
    out = subprocess.run([g, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    ver = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if ver < MIN_GIT:
        return Check("git version", "missing", f"{out.strip()}; need >= {MIN_GIT[0]}.{MIN_GIT[1]} (worktrees, range-diff)",
                     "apt-get install -y -t bookworm git")
    return Check("git version", "ok", out.strip())


def _mailtools() -> Check:
    # git send-email's SMTP code (Mail::Address) comes from this package.
    ok = subprocess.run(["perl", "-MMail::Address", "-e", "1"], capture_output=True).returncode == 0 \
        if shutil.which("perl") else False
    if ok:
        return Check("libmailtools-perl", "ok", "Mail::Address for git send-email", required=False)
    return Check("libmailtools-perl", "missing", "git send-email cannot load Mail::Address (kpt mail --send)",
                 "apt-get install -y libmailtools-perl", required=False)


def _busybox() -> Check:
    p = Path("/bin/busybox")
    if p.exists():
        out = subprocess.run(["file", "-b", str(p)], capture_output=True, text=True).stdout if shutil.which("file") else ""
        if "dynamically" in out:
            return Check("busybox-static", "missing", f"{p} is dynamically linked; the initramfs needs a static one",
                         "apt-get install -y busybox-static")
        return Check("busybox-static", "ok", str(p))
    return Check("busybox-static", "missing", "no /bin/busybox for the initramfs", "apt-get install -y busybox-static")


def xen_binary() -> Path | None:
    for cand in sorted(Path("/boot").glob("xen-4.*-amd64.gz"), reverse=True):
        return cand
    return None


def _xen() -> Check:
    x = xen_binary()
    if x:
        return Check("xen hypervisor", "ok", f"{x} (xen and xen+domU modes)", required=False)
    return Check("xen hypervisor", "missing", "no /boot/xen-4.*-amd64.gz for --mode xen",
                 "apt-get install -y xen-hypervisor-4.17-amd64", required=False)


def _linux_source(ws: Workspace) -> list[Check]:
    out = []
    for spec in ws.trees.values():
        if spec.source.startswith("debian:"):
            pkg = spec.source.split(":", 1)[1]
            ok = any(Path("/usr/src").glob(f"{pkg}.tar.*"))
            out.append(Check(f"tree {spec.name}", "ok" if ok else "missing",
                             f"{pkg} tarball in /usr/src" if ok else f"{pkg} not installed",
                             "" if ok else f"apt-get install -y {pkg}", required=spec.name == "linux"))
        elif spec.source.startswith("debian-src:"):
            has_src = _has_deb_src()
            out.append(Check(f"tree {spec.name}", "ok" if has_src else "missing",
                             "apt has deb-src entries" if has_src else "apt has no deb-src entries (apt-get source fails)",
                             "" if has_src else "scripts/setup.sh (adds deb-src entries as root)", required=False))
    return out


def _has_deb_src() -> bool:
    for f in list(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        if re.search(r"^Types:.*deb-src|^deb-src\s", text, re.M):
            return True
    return False


def _disk(ws: Workspace) -> Check:
    d = ws.cache_dir
    while not d.exists():
        d = d.parent
    free = shutil.disk_usage(d).free / 2**30
    if free < MIN_FREE_GB:
        return Check("disk", "warn", f"{free:.0f} GiB free under {d}; a kernel tree + builds take ~{MIN_FREE_GB} GiB",
                     f"free space under {d} or set KPT_CACHE", required=False)
    return Check("disk", "ok", f"{free:.0f} GiB free under {d}")


def kvm_usable(timeout: float = 8.0) -> tuple[bool, str]:
    """Does KVM really run a guest here? /dev/kvm opening is not enough.

    Some hosts expose a software /dev/kvm without VT-x/SVM: QEMU then hangs in
    the firmware or aborts on MSRs. A tiny probe boot tells: QEMU with KVM must
    reach the point of executing guest code and exit through isa-debug-exit.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not re.search(r"\b(vmx|svm)\b", cpuinfo):
        return False, "/dev/kvm exists but the CPU has no vmx/svm flags (software KVM); using TCG"
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return False, "qemu-system-x86_64 not found"
    # A 3-byte boot: `out 0xf4, al` to isa-debug-exit makes QEMU exit with (al<<1)|1.
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "probe.bin"
        code = bytes([0xB0, 0x21, 0xE6, 0xF4]) + b"\xF4" * 500 + b"\x55\xAA"
        img.write_bytes(code)
        try:
            res = subprocess.run(
                [qemu, "-accel", "kvm", "-cpu", "host", "-display", "none", "-no-reboot", "-m", "16",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-drive", f"file={img},format=raw,if=floppy",
                 "-boot", "a"],
                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, "a KVM probe guest hung; using TCG"
    if res.returncode == (0x21 << 1) | 1:
        return True, "KVM runs guests"
    msg = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"KVM probe failed ({msg}); using TCG"


def _kvm() -> Check:
    ok, why = kvm_usable()
    return Check("kvm", "ok" if ok else "warn", why if ok else f"{why}; boots run under TCG (slower, still correct)",
                 required=False)


def run_checks(ws: Workspace, env_path: str | None = None) -> Report:
    rep = Report()
    rep.checks.append(_git_version(env_path))
    for tool, pkg, purpose, required in TOOLS:
        rep.checks.append(_tool_check(tool, pkg, purpose, required, env_path))
    rep.checks.append(_busybox())
    rep.checks.append(_mailtools())
    rep.checks.append(_xen())
    rep.checks.extend(_linux_source(ws))
    rep.checks.append(_disk(ws))
    rep.checks.append(_kvm())
    return rep
