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


def _package_checks(env_path: str | None) -> list[Check]:
    """One row per package of data/packages.txt (the list setup.sh installs)."""
    from kpatch_tool import prereqs

    out = []
    missing = {p.name: c for p, c in prereqs.missing_all(env_path)}
    for p in prereqs.packages():
        if "setup" in p.stages and p.name not in missing:
            continue
        stages = ", ".join(p.stages)
        # A stage most runs never reach (mail, QEMU builds, the report's screenshots) is not required.
        required = bool({"all", "import", "config", "build", "image", "boot", "xen"} & set(p.stages))
        if p.name in missing:
            out.append(Check(p.name, "missing", f"{missing[p.name]} not found; needed by: {stages}",
                             f"apt-get install -y {p.name}", required=required))
        else:
            where = ", ".join(filter(None, (prereqs.check_one(c, env_path) for c in p.checks))) or "installed"
            out.append(Check(p.name, "ok", f"{where} ({stages})", required=required))
    return out


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


def _busybox() -> Check:
    p = Path("/bin/busybox")
    if p.exists():
        out = subprocess.run(["file", "-b", str(p)], capture_output=True, text=True).stdout if shutil.which("file") else ""
        if "dynamically" in out:
            return Check("busybox is static", "missing", f"{p} is dynamically linked; the initramfs needs a static one",
                         "apt-get install -y busybox-static")
        return Check("busybox is static", "ok", str(p))
    return Check("busybox is static", "missing", "no /bin/busybox for the initramfs", "apt-get install -y busybox-static")


def xen_binary() -> Path | None:
    for cand in sorted(Path("/boot").glob("xen-4.*-amd64.gz"), reverse=True):
        return cand
    return None


def _trees(ws: Workspace, offline: bool = False) -> list[Check]:
    """Per tree: the pinned version, what the archive offers, what is imported, series left behind."""
    from kpatch_tool import apt, trees
    from kpatch_tool import series as seriesmod
    from kpatch_tool.errors import KptError

    out = []
    try:
        all_series = seriesmod.list_series(ws)
    except KptError:  # a broken series is the series commands' to report
        all_series = []
    for spec in ws.trees.values():
        t = trees.get(ws, spec.name)
        kind = trees.source_kind(spec.source)
        if kind not in ("debian", "debian-src"):
            out.append(Check(f"tree {spec.name}", "ok", f"{spec.source}: {t.state}", required=False))
            continue
        package = spec.source.split(":", 1)[1]
        newest = None
        offered = "not asked (--offline)"
        if not offline:
            try:
                offers = trees.archive(ws, spec.name).offers(package, source=kind == "debian-src")
                newest = offers[0].version if offers else None
                offered = f"{offers[0].version} ({offers[0].suite})" if offers else "none"
            except KptError as exc:
                offered = f"unknown ({exc.message})"
        held = {trees.version_tag(v) for v in t.imports}
        behind = [f"{s.name} ({s.trees[spec.name].base})" for s in all_series
                  if spec.name in s.trees and (s.trees[spec.name].base or "").startswith("debian/")
                  and s.trees[spec.name].base not in held]
        detail = (f"pinned {spec.version or '(none)'}; archive newest {offered}; "
                  f"imported {', '.join(sorted(t.imports)) or 'none'}")
        if behind:
            detail += f"; series bases not imported yet (fetched on first use): {', '.join(behind)}"
        if spec.version and newest and apt.noepoch(newest) != apt.noepoch(spec.version):
            detail += f"; `kpt tree update {spec.name} --dry-run` shows what moving to {newest} would do"
        out.append(Check(f"tree {spec.name}", "ok" if spec.version else "missing", detail,
                         "" if spec.version else f"kpt tree update {spec.name}  (pins the newest version)",
                         required=spec.name == "linux"))
    return out


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


def run_checks(ws: Workspace, env_path: str | None = None, offline: bool = False) -> Report:
    rep = Report()
    rep.checks.append(_git_version(env_path))
    rep.checks.extend(_package_checks(env_path))
    rep.checks.append(_busybox())
    rep.checks.extend(_trees(ws, offline=offline))
    rep.checks.append(_disk(ws))
    rep.checks.append(_kvm())
    return rep
