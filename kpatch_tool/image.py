"""The boot image: a deterministic initramfs (cpio newc, gzip) with busybox, modules and checks.

Same inputs give the same bytes (sorted entries, mtime 0, uid/gid 0, inode
numbers by position, gzip without a timestamp), so the image is cached under
cache_dir/images/ by the hash of its content and a rerun does no work. The
guest's /init is rendered from kpatch_tool/templates/init.sh.j2; it runs the base checks
and the series' `[[smoke]]` checks and prints KTAP.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path


from kpatch_tool import templating
from kpatch_tool.modes import IMAGE_MODES
from kpatch_tool.series import SMOKE_NEEDS, SMOKE_TIMEOUT
from kpatch_tool.errors import PrereqError, UsageError
from kpatch_tool.workspace import Workspace

BUSYBOX = Path("/bin/busybox")
MODES = tuple(IMAGE_MODES)
WHERE = IMAGE_MODES  # where each image mode's /init runs
# Bump when the layout or /init changes meaning, so old cached images are not reused.
FORMAT = "kpt-initramfs-1"

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


# ---------------------------------------------------------------- cpio newc

@dataclass
class Entry:
    path: str  # relative, no leading slash
    mode: int  # full st_mode (type | permissions)
    data: bytes = b""  # file content, or the symlink target
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def pack(entries: list[Entry]) -> bytes:
    """A newc archive of entries; parents are added, order and numbering are fixed."""
    byname: dict[str, Entry] = {}
    for e in entries:
        p = e.path.strip("/")
        if not p or p == ".":
            continue
        byname[p] = Entry(p, e.mode, e.data, e.rdev)
        parts = p.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            byname.setdefault(d, Entry(d, S_IFDIR | 0o755))
    out = bytearray()
    for ino, p in enumerate(sorted(byname), 1):
        e = byname[p]
        name = p.encode() + b"\0"
        nlink = 2 if e.mode & 0o170000 == S_IFDIR else 1
        data = e.data if e.mode & 0o170000 in (S_IFREG, S_IFLNK) else b""
        out += _header(ino, e.mode, nlink, len(data), e.rdev, len(name))
        out += name + _pad(110 + len(name))
        out += data + _pad(len(data))
    name = b"TRAILER!!!\0"
    out += _header(0, 0, 1, 0, (0, 0), len(name)) + name + _pad(110 + len(name))
    return bytes(out)


def gzip_bytes(data: bytes) -> bytes:
    # mtime=0 and no file name in the header: the same archive gives the same .gz.
    return gzip.compress(data, compresslevel=6, mtime=0)


# ---------------------------------------------------------------- contents

def busybox_entries(busybox: Path = BUSYBOX) -> list[Entry]:
    if not busybox.is_file():
        raise PrereqError(f"{busybox}: not found (apt-get install busybox-static)")
    data = busybox.read_bytes()
    out = [Entry("bin/busybox", S_IFREG | 0o755, data)]
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    for rel in applets.split():
        if rel != "bin/busybox":
            out.append(Entry(rel, S_IFLNK | 0o777, b"/bin/busybox"))
    return out


def base_entries() -> list[Entry]:
    # The kernel opens /dev/console for init before devtmpfs is mounted; without
    # the node /init's output (the KTAP) is lost.
    out = [Entry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)), Entry("dev/null", S_IFCHR | 0o666, rdev=(1, 3))]
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "sys/kernel/debug", "proc/xen"):
        out.append(Entry(d, S_IFDIR | 0o755))
    return out


def module_files(modules_dir: Path | None) -> tuple[list[Entry], list[str], bool]:
    """Entries for lib/modules/ of a modules_install staging folder, the module paths, has modules.dep."""
    if not modules_dir:
        return [], [], False
    modules_dir = Path(modules_dir)
    lib = modules_dir / "lib" / "modules"
    if not lib.is_dir():
        raise UsageError(f"{modules_dir}: no lib/modules/ (pass the INSTALL_MOD_PATH of `make modules_install`)")
    entries, kos, has_dep = [], [], False
    for dirpath, dirnames, filenames in os.walk(lib):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(modules_dir)
        for fn in sorted(filenames) + sorted(d for d in dirnames if (Path(dirpath) / d).is_symlink()):
            src = Path(dirpath) / fn
            rel = (rel_dir / fn).as_posix()
            if src.is_symlink():
                continue  # build/ and source/ point into the host's tree
            entries.append(Entry(rel, S_IFREG | 0o644, src.read_bytes()))
            if re.search(r"\.ko(\.(xz|gz|zst))?$", fn):
                kos.append("/" + rel)
            if fn == "modules.dep":
                has_dep = True
    return entries, sorted(kos), has_dep


def kernel_release(build_dir: Path) -> str:
    f = Path(build_dir) / "include" / "config" / "kernel.release"
    try:
        return f.read_text().strip()
    except OSError:
        raise UsageError(f"{build_dir}: no include/config/kernel.release (not a built kernel O= folder?)") from None


# ---------------------------------------------------------------- checks

def load_smoke(ws: Workspace, series: list[str], *, on_base: bool = False) -> list[dict]:
    """The `[[smoke]]` checks of the named series (from the one series model), each tagged with its series.

    on_base: the checks run on the base tree without these series (their `on_base` form).

    Series come in depends order; a check named like an earlier series' check in the same
    place (where) replaces it: a series that changes what a dependency's check looks at
    (another kind of DMA address, say) says so with its own check or with `skip`."""
    from kpatch_tool.series import load_series

    out: list[dict] = []
    for name in series:
        for test in load_series(ws, name).smoke:
            check = test.as_check(name, on_base=on_base)
            out = [c for c in out if (c["where"], c["name"]) != (check["where"], check["name"])]
            out.append(check)
    return out


def normalise_smoke(sm: dict, *, series: str, where_from: str = "smoke") -> dict:
    needs = f"{where_from}: a smoke test needs 'name' and 'run' (or 'skip' with a reason)"
    if not isinstance(sm, dict):
        raise UsageError(needs)
    skip = sm.get("skip", "")
    if not isinstance(skip, str):
        raise UsageError(f"{where_from}: skip must be a string (the reason)")
    if not sm.get("name") or not (sm.get("run") or skip):
        raise UsageError(needs)
    where = sm.get("where", "guest")
    if where not in ("guest", "dom0", "domU"):
        raise UsageError(f"{where_from}: where = '{where}' (guest, dom0 or domU)")
    expect = sm.get("expect") or ""
    try:
        re.compile(expect)
    except re.error as exc:
        raise UsageError(f"{where_from}: expect is not a regex: {exc}") from None
    try:
        timeout = int(sm.get("timeout", SMOKE_TIMEOUT))
    except (TypeError, ValueError):
        raise UsageError(f"{where_from}: timeout must be a number of seconds") from None
    if not re.fullmatch(r"[A-Za-z0-9_.:+-]+", str(sm["name"])):
        raise UsageError(f"{where_from}: name '{sm['name']}' (letters, digits and _.:+- only; it is a KTAP test name)")
    return {"series": sm.get("series", series), "name": str(sm["name"]), "where": where,
            "run": str(sm.get("run") or "true"), "expect": expect, "timeout": max(1, timeout), "skip": skip,
            "needs": list(sm.get("needs") or [])}


# What a clean dmesg has none of: oopses, a message that starts with WARNING: (WARN()'s
# "WARNING: CPU:", the grant table's "WARNING: leaking g.e."), BUG:, and a frontend's
# "Grant still in use by backend domain". A WARNING: inside a line is an advisory
# ("Speculative Return Stack Overflow: WARNING: See ..." on Zen hosts), not a fault.
OOPS_RE = r"Oops:|BUG:|(^|\] )WARNING:|general protection fault|Kernel panic|Call Trace:|Grant still in use"


def dmesg_clean_check(name: str = "dmesg-clean") -> dict:
    """The check that the kernel log has none of OOPS_RE (what it found is the check's output)."""
    return {"name": name, "run": f"if dmesg | grep -E '{OOPS_RE}'; then exit 1; fi; echo clean",
            "expect": "", "timeout": 10, "skip": ""}


def ere_escape(s: str) -> str:
    """s as a literal in a POSIX extended regex (busybox grep -E), unlike re.escape's `\\-`."""
    return re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", s)


AFTER_CHECKS = "after-checks"


def base_checks(kernel_release: str, modules: list[str], has_dep: bool, mode: str) -> list[dict]:
    checks = [{"name": "kernel-release", "run": "uname -r", "expect": f"^{ere_escape(kernel_release)}$",
               "timeout": 10, "skip": ""}]
    if not modules:
        checks.append({"name": "modules-load", "run": "true", "expect": "", "timeout": 10,
                       "skip": "no modules in the image"})
    for ko in modules:
        mod = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", Path(ko).name)
        # modprobe resolves dependencies through modules.dep; insmod needs none.
        load = f"modprobe {shlex.quote(mod)}" if has_dep else f"insmod {shlex.quote(ko)}"
        # A driver for hardware QEMU does not have refuses with ENODEV: that is a skip, not a failure.
        cmd = (f"out=$({load} 2>&1); rc=$?; [ -n \"$out\" ] && echo \"$out\"; "
               f"case \"$out\" in *'No such device'*) echo 'no such device in this machine'; exit 77;; esac; "
               f"[ $rc = 0 ] && grep -q '^{mod.replace('-', '_')} ' /proc/modules && echo loaded")
        checks.append({"name": f"module-{mod}", "run": cmd, "expect": "", "timeout": 30, "skip": ""})
    if mode == "xen":
        checks += [
            {"name": "xen-capabilities",
             "run": "mount -t xenfs xenfs /proc/xen 2>/dev/null; cat /proc/xen/capabilities",
             "expect": "control_d", "timeout": 10, "skip": ""},
            {"name": "hypervisor-type", "run": "cat /sys/hypervisor/type", "expect": "^xen$", "timeout": 10, "skip": ""},
            {"name": "xenbus", "run": "ls /sys/bus/xen/devices && ls -d /sys/bus/xen-backend",
             "expect": "", "timeout": 10, "skip": ""},
            {"name": "xen-devices", "run": "ls -l /dev/xen/evtchn /dev/xen/gntdev", "expect": "", "timeout": 10,
             "skip": ""},
        ]
    # Last: anything the checks above made the kernel say.
    checks.append(dmesg_clean_check())
    return checks


def plan_groups(kernel_release: str, modules: list[str], has_dep: bool, smoke: list[dict], mode: str) -> list[dict]:
    """The KTAP groups /init runs: `base`, then one per series in the order given, then
    `after-checks`: the kernel log once every check ran (what the series' checks made it say)."""
    if mode not in MODES:
        raise UsageError(f"mode '{mode}': one of {', '.join(MODES)}")
    groups = [{"name": "base", "checks": base_checks(kernel_release, modules, has_dep, mode)}]
    byseries: dict[str, list[dict]] = {}
    for sm in smoke:
        sm = normalise_smoke(sm, series=sm.get("series", "smoke"))
        if sm["where"] != WHERE[mode]:
            sm["skip"] = f"runs in {sm['where']}, not in {WHERE[mode]} ({mode} mode)"
        elif mode != "domU" and sm.get("needs") and not sm["skip"]:
            # guest and xen modes have no domU and no device model: say so instead of timing out.
            sm["skip"] = "needs " + " and ".join(SMOKE_NEEDS[n] for n in sm["needs"]) + f", not in {mode} mode"
        byseries.setdefault(sm["series"], []).append(sm)
    for name, checks in byseries.items():
        groups.append({"name": name, "checks": checks})
    groups.append({"name": AFTER_CHECKS, "checks": [dmesg_clean_check()]})
    return groups


def render_init(ws: Workspace, *, mode: str, kernel_release: str, groups: list[dict],
                hold_port: int | None = None, long_checks: bool = False) -> str:
    return templating.render("init.sh.j2", mode=mode, kernel_release=kernel_release, groups=groups,
                             hold_port=hold_port, long_checks=long_checks)


# ---------------------------------------------------------------- the image

def _extra_entry(path: str, data: bytes) -> Entry:
    executable = data.startswith(b"#!") or data.startswith(b"\x7fELF")
    return Entry(path.lstrip("/"), S_IFREG | (0o755 if executable else 0o644), data)


def build_initramfs(ws: Workspace, *, kernel_release: str, modules_dir: Path | None, smoke: list[dict],
                    mode: str, extra_files: dict[str, bytes] | None = None, busybox: Path = BUSYBOX,
                    hold_port: int | None = None, long_checks: bool = False) -> Path:
    """The initramfs for one boot, built once per distinct content (cached); returns its path.

    hold_port (domU): after its checks /init waits for a connection on that
    port (dom0's release, up to 2 minutes) before powering off, so dom0 can
    run the checks that need the domain alive.
    """
    mod_entries, kos, has_dep = module_files(modules_dir)
    groups = plan_groups(kernel_release, kos, has_dep, smoke, mode)
    init = render_init(ws, mode=mode, kernel_release=kernel_release, groups=groups, hold_port=hold_port,
                       long_checks=long_checks)
    entries = busybox_entries(busybox) + base_entries() + mod_entries
    entries += [_extra_entry(p, d) for p, d in sorted((extra_files or {}).items())]
    entries.append(Entry("init", S_IFREG | 0o755, init.encode()))
    return store(ws, pack(entries))


def store(ws: Workspace, archive: bytes) -> Path:
    """Compress archive into the image cache, named by its content hash (reused when present)."""
    digest = hashlib.sha256(FORMAT.encode() + b"\0" + archive).hexdigest()[:20]
    out_dir = ws.cache_dir / "images"
    path = out_dir / f"initramfs-{digest}.cpio.gz"
    if path.is_file():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(gzip_bytes(archive))
    os.replace(tmp, path)
    return path


def uncompressed_size(path: Path) -> int:
    with gzip.open(path, "rb") as fh:
        n = 0
        while chunk := fh.read(1 << 20):
            n += len(chunk)
    return n
