"""The dom0 root filesystem for nested Xen: Debian's Xen toolstack in an initramfs.

debootstrap (minbase) makes a Debian 12 system with xen-utils-4.17 (xl,
xenstored, xenconsoled), iproute2 and busybox; it is trimmed of what a smoke
boot never reads and kept as a tarball, cached by (suite, mirror, packages).
Per run the kernel's modules, the init script, the domU's kernel and initramfs
(and a QEMU binary when a series builds one) are added, and the whole is packed
as a plain (uncompressed) cpio for dom0's initramfs: no loop mounts, no root
filesystem image to mount. Uncompressed because dom0's kernel unpacks it under
TCG: inflating the 53 MiB gzip took 6 s of a 45 s boot, reading a plain cpio
well under one; QEMU and Xen only copy the bytes. What no smoke boot runs
(udev's hardware database, Python, Perl, dpkg's and apt's state) is left out
when packing (DROP), so the debootstrapped base stays cached as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import proc, safefs
from kpatch_tool.errors import KptError, PrereqError
from kpatch_tool.workspace import Workspace

SUITE = "bookworm"
PACKAGES = ["xen-utils-4.17", "iproute2", "busybox-static", "ethtool", "iputils-ping", "procps", "kmod"]
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/i18n",
        "usr/share/zoneinfo", "usr/share/common-licenses", "usr/share/bash-completion", "usr/share/lintian",
        "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "var/log", "usr/lib/x86_64-linux-gnu/gconv",
        "usr/share/perl", "usr/lib/x86_64-linux-gnu/perl", "usr/share/perl5", "usr/bin/perl", "usr/share/xml",
        "usr/lib/xen-4.17/boot", "usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe", "usr/share/ovmf"]

# Left out of dom0's initramfs when packing (tar --exclude patterns, relative to
# the root): nothing in dom0's init, xl's hotplug scripts or a series' checks
# reads them, and every byte is copied twice and unpacked under TCG. udev's
# hwdb alone was 22 MiB, Python 33 MiB.
DROP = ["./usr/lib/udev/hwdb.d", "./usr/lib/udev/hwdb.bin", "./usr/lib/python3*", "./usr/bin/python3*",
        "./usr/bin/perl*", "./var/lib/dpkg", "./usr/lib/apt", "./var/lib/apt", "./usr/share/keyrings",
        "./usr/lib/locale", "./usr/lib/x86_64-linux-gnu/libapt-*", "./usr/bin/localedef", "./usr/bin/apt*",
        "./usr/bin/dpkg*", "./usr/bin/xenalyze", "./usr/share/python3", "./usr/share/gcc"]


@dataclass
class RootfsBase:
    tarball: Path
    packages: list[str]
    seconds: float
    cached: bool
    size: int


def apt_mirror() -> str:
    """The Debian mirror apt itself uses (the one kpt's own apt state starts from too)."""
    from kpatch_tool import apt

    return apt.host_mirrors()[0]


def base(ws: Workspace, *, packages: list[str] | None = None, progress=None) -> RootfsBase:
    pkgs = sorted(set(packages or PACKAGES))
    mirror = apt_mirror()
    key = hashlib.sha256(json.dumps([SUITE, mirror, pkgs, TRIM]).encode()).hexdigest()[:16]
    out = ws.cache_dir / "images" / f"dom0-base-{key}.tar"
    if out.exists():
        return RootfsBase(out, pkgs, 0.0, True, out.stat().st_size)
    if not proc.which("debootstrap"):
        raise PrereqError("debootstrap: not found (apt-get install -y debootstrap)")
    if os.geteuid() != 0:
        raise PrereqError("the dom0 root filesystem needs debootstrap as root (run kpt as root)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kpt-rootfs-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        log = out.parent / f"dom0-base-{key}.log"
        if progress:
            progress(f"debootstrap {SUITE} minbase with {', '.join(pkgs)} from {mirror}")
        res = proc.run(["debootstrap", "--variant=minbase", f"--include={','.join(pkgs)}", SUITE, str(root), mirror],
                       timeout=3600, log=log)
        if not res.ok:
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise KptError(f"debootstrap failed: {last[0]} (log {log})")
        for rel in TRIM:
            p = root / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        (root / "var/log").mkdir(exist_ok=True)
        tmp_tar = out.with_suffix(".tar.part")
        proc.run(["tar", "-C", str(root), "--numeric-owner", "--sort=name", "-cf", str(tmp_tar), "."],
                 timeout=1800, check=True)
        os.replace(tmp_tar, out)
    return RootfsBase(out, pkgs, time.monotonic() - t0, False, out.stat().st_size)


def _hash_inputs(parts: list) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            if p.is_dir():
                h.update(tree_digest(p).encode())
            elif p.exists():
                h.update(safefs.sha256_file(p).encode())
        elif isinstance(p, bytes):
            h.update(hashlib.sha256(p).digest())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:20]


def tree_digest(top: Path) -> str:
    """Content of a folder: every path, its mode and its bytes (or a symlink's target)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                h.update(f"L {rel} {os.readlink(p)}\n".encode())
            else:
                h.update(f"F {rel} {p.stat().st_mode & 0o777:o} {safefs.sha256_file(p)}".encode())
    return h.hexdigest()


# Not laid over dom0's root: what only building against the tools needs.
OVERLAY_SKIP = ("usr/include", "usr/lib/x86_64-linux-gnu/pkgconfig")


def overlay(src: Path, root: Path) -> None:
    """Lay src's files over root: a file or symlink replaces what is there, never writes
    through it (Debian's /usr/sbin/xl is a symlink to a wrapper other commands share).
    Headers, pkg-config files and static libraries are left out (OVERLAY_SKIP)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if any(str(rel) == s or str(rel).startswith(s + "/") for s in OVERLAY_SKIP):
            dirnames[:] = []
            continue
        filenames = [f for f in filenames if not f.endswith(".a")]
        (root / rel).mkdir(parents=True, exist_ok=True)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in filenames + links:
            s, d = Path(dirpath) / name, root / rel / name
            if d.is_symlink() or d.is_file():
                d.unlink()
            elif d.is_dir():
                shutil.rmtree(d)
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
            else:
                shutil.copy2(s, d)


def pack(ws: Workspace, base_: RootfsBase, *, modules_dir: Path | None, files: dict[str, bytes | Path],
         executables: tuple[str, ...] = (), overlays: list[Path] = (), progress=None) -> Path:
    """base (less DROP) + modules + overlays + files -> a plain cpio initramfs, cached by the hash
    of its inputs.

    files maps absolute guest paths to contents (bytes) or host files (Path);
    overlays are folders laid over the root (a `make install DESTDIR=`), before files.
    """
    keyparts: list = [base_.tarball.name, modules_dir or "-", "overlays", *(Path(o) for o in overlays)]
    for k in sorted(files):
        keyparts += [k, files[k] if isinstance(files[k], bytes) else Path(files[k])]
    keyparts += sorted(executables) + DROP
    key = _hash_inputs(keyparts)
    out = ws.cache_dir / "images" / f"dom0-rootfs-{key}.cpio"
    if out.exists():
        return out
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kpt-pack-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        proc.run(["tar", "-C", str(root), "--numeric-owner", "--wildcards", *(f"--exclude={d}" for d in DROP),
                  "-xf", str(base_.tarball)], timeout=1800, check=True)
        if modules_dir and (modules_dir / "lib/modules").is_dir():
            shutil.copytree(modules_dir / "lib/modules", root / "lib/modules", dirs_exist_ok=True, symlinks=True)
            for kdir in (root / "lib/modules").iterdir():
                for link in ("build", "source"):
                    (kdir / link).unlink(missing_ok=True)
        for o in overlays:
            overlay(Path(o), root)
        for guest_path, content in files.items():
            dest = root / guest_path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
            if guest_path in executables:
                dest.chmod(0o755)
        dev = root / "dev"
        dev.mkdir(exist_ok=True)
        if not (dev / "console").exists():
            os.mknod(dev / "console", 0o600 | 0o020000, os.makedev(5, 1))
        names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True).stdout
        names = b"\n".join(sorted(names.split(b"\n")[:-1] if names.endswith(b"\n") else names.split(b"\n"))) + b"\n"
        part = out.with_suffix(".part")
        with open(part, "wb") as fh:
            cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"], cwd=root,
                                  input=names, stdout=fh, stderr=subprocess.PIPE)
        if cpio.returncode != 0:
            raise KptError(f"cpio failed packing the dom0 root filesystem: {cpio.stderr.decode(errors='replace')[-300:]}")
        os.replace(part, out)
    if progress:
        progress(f"dom0 rootfs packed: {out.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t0:.1f}s")
    return out
