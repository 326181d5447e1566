"""A Debian source package's own patches as a kpt series (`kpt series import --debian-src PKG[=VERSION]`).

The package is a kpt tree (`source = "debian-src:PKG"`, pinned): its version is
imported the usual way (trees.import_version: the .dsc fetched into kpt's cache,
`dpkg-source -x` with Debian's patches applied, tagged `debian/VERSION`), and
beside it the orig tree (trees.import_orig: the orig tarball(s) without the
patches and without debian/, tagged `upstream/UPSTREAM`). The series is the
package's `debian/patches` quilt folder read by quilt.read_folder over the
orig tree, so applying it gives what `dpkg-source -x` gives.

A tree of the package that kpt.toml does not have yet is added to it (pinned to
the version imported) once the series is written; nothing is written before.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from kpatch_tool import apt, proc, safefs, trees
from kpatch_tool.errors import KptError, UsageError
from kpatch_tool.workspace import NAME_RULE, TreeSpec, Workspace, valid_name

# Debian policy 5.6.1: source package names.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
VERSION_RE = re.compile(r"^(\d+:)?[0-9][A-Za-z0-9.+~:-]*$")
VENDOR = "debian"  # dpkg-source reads debian/patches/<vendor>.series before series


@dataclass
class DebianSource:
    package: str
    version: str  # as the archive spells it (epoch included)
    tree: str
    new_tree: bool  # added to kpt.toml by this import
    dsc: Path
    patched: str  # the debian/VERSION commit (dpkg-source -x)
    orig: dict  # tag, commit, files of the orig tree
    order_file: str  # debian/patches/series (or debian.series)
    patches: int = 0


def parse_spec(text: str) -> tuple[str, str | None]:
    """`PKG` or `PKG=VERSION`."""
    package, eq, version = text.strip().partition("=")
    package, version = package.strip(), version.strip()
    if not PACKAGE_RE.match(package):
        raise UsageError(f"--debian-src '{text}': '{package}' is not a Debian source package name "
                         "(lower-case letters, digits, + - ., two or more)")
    if eq and not VERSION_RE.match(version):
        raise UsageError(f"--debian-src '{text}': '{version}' is not a Debian version")
    return package, version or None


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and apt.noepoch(a) == apt.noepoch(b)


def pick_tree(ws: Workspace, package: str, version: str | None, tree: str | None) -> tuple[str, bool]:
    """The tree the package's series goes on: (name, True if kpt.toml does not have it yet)."""
    source = f"debian-src:{package}"
    if tree is not None:
        if tree in ws.trees:
            if ws.trees[tree].source != source:
                raise UsageError(f"tree '{tree}' is {ws.trees[tree].source}, not {source}; "
                                 f"name another --tree (a new name adds a tree of {package} to kpt.toml)")
            return tree, False
        if not valid_name(tree):
            raise UsageError(f"--tree '{tree}': not a valid tree name ({NAME_RULE})")
        return tree, True
    ours = [n for n, s in ws.trees.items() if s.source == source]
    pinned = [n for n in ours if _same(ws.trees[n].version, version)]
    if len(pinned) == 1:
        return pinned[0], False
    if package in ours:
        return package, False
    if len(ours) == 1:
        return ours[0], False
    if ours:
        raise UsageError(f"several trees are {source} ({', '.join(ours)}); say which with --tree")
    for name in (package, f"{package}-src"):
        if name not in ws.trees and valid_name(name):
            return name, True
    raise UsageError(f"no tree of {source} in kpt.toml and the names {package}, {package}-src are taken; "
                     "name a new tree with --tree")


def _archive(ws: Workspace, tree: str) -> apt.Archive:
    return trees.archive(ws, tree) if tree in ws.trees else apt.Archive(ws.cache_dir, ws.data.get("apt") or {})


def default_version(ws: Workspace, package: str, tree: str) -> str:
    """The tree's pin; else the version a pinned `debian:` tree of the package's binaries
    was built from; else the newest the archive offers."""
    spec = ws.trees.get(tree)
    if spec and spec.version:
        return spec.version
    for name, s in ws.trees.items():
        if trees.source_kind(s.source) != "debian" or not s.version:
            continue
        try:
            src = trees.archive(ws, name).source_of(s.source.split(":", 1)[1], s.version)
        except KptError:
            continue  # that tree's suites cannot be read (an expired sid, say): not this package's business
        if src and src[0] == package:
            return src[1]
    offers = _archive(ws, tree).offers(package, source=True)
    if not offers:
        raise UsageError(f"Debian's archive (as kpt reads it) has no source package '{package}'")
    best = offers[0].version
    for o in offers[1:]:
        if apt.compare_versions(o.version, best) > 0:
            best = o.version
    return best


def dsc_field(dsc: Path, key: str) -> str:
    """One field of a .dsc (its signature lines ignored)."""
    try:
        text = dsc.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{dsc}: cannot read it: {exc.strerror}") from None
    m = re.search(rf"(?mi)^{re.escape(key)}:[ \t]*(.*)$", text)
    return m.group(1).strip() if m else ""


def unpack_patches(repo: Path, ref: str, dest: Path, label: str) -> tuple[Path, str]:
    """debian/patches of ref (the dpkg-source -x import) as a quilt folder in dest.

    Returns (folder, the order file dpkg-source reads). Only `3.0 (quilt)` packages
    carry a patch series.
    """
    res = proc.run(["git", "--git-dir", str(repo), "archive", "--format=tar", ref, "--", "debian/source",
                    "debian/patches"], text=False, timeout=300)
    if not res.ok:
        got = proc.run(["git", "--git-dir", str(repo), "cat-file", "-p", f"{ref}:debian/source/format"])
        what = f"its source format is {got.stdout.strip()}" if got.ok else "it has no debian/source/format"
        raise UsageError(f"{label} has no debian/patches ({what}): it carries no patch series")
    try:
        with tarfile.open(fileobj=io.BytesIO(cast(bytes, res.stdout))) as tf:
            safefs.extract_tar(tf, dest)
    except ValueError as exc:
        raise UsageError(f"{label}: debian/patches: {exc}") from None
    fmt_file = dest / "debian/source/format"
    fmt = fmt_file.read_text(errors="replace").strip() if fmt_file.is_file() else "1.0"
    if fmt != "3.0 (quilt)":
        raise UsageError(f"{label}: source format '{fmt}', not '3.0 (quilt)': its debian/patches is no series "
                         "dpkg-source applies")
    folder = dest / "debian/patches"
    order = f"{VENDOR}.series" if (folder / f"{VENDOR}.series").is_file() else "series"
    if not (folder / order).is_file():
        raise UsageError(f"{label}: debian/patches has no series file: it carries no patch series")
    # dpkg-source applies every patch with -p1 and ignores other options on a line
    # (it warns); so does kpt here, for the tree to be the one dpkg-source makes.
    lines = (folder / order).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    kept = [line.split()[0] if line.strip() and not line.lstrip().startswith("#") else line for line in lines]
    (folder / "series").write_text("".join(f"{line}\n" for line in kept), encoding="utf-8", errors="surrogateescape")
    return folder, f"debian/patches/{order}"


def prepare(ws: Workspace, spec: str, tree: str | None, *, progress=None) -> DebianSource:
    """Import the package's version and its orig tree into the tree's repository.

    kpt.toml is not written here; a new tree lives in ws.trees only until the series is in.
    """
    package, version = parse_spec(spec)
    name, new = pick_tree(ws, package, version, tree)
    if new:
        kind = package if package in ("linux", "qemu", "xen") else name.split("-")[0]
        ws.trees[name] = TreeSpec(name, f"debian-src:{package}", None,
                                  kind if kind in ("linux", "qemu", "xen") else "linux")
    try:
        version = version or default_version(ws, package, name)
        if new:
            ws.trees[name].version = version
        entry = trees.import_version(ws, name, version, progress=progress)
        orig = trees.import_orig(ws, name, version, progress=progress)
    except KptError:
        if new:
            del ws.trees[name]
        raise
    dsc = Path(entry["artifact"])
    # The archive's spelling (with its epoch), also when the user left the epoch out.
    version = dsc_field(dsc, "Version") or version
    if new:
        ws.trees[name].version = version
    return DebianSource(package, version, name, new, dsc, entry["commit"], orig, "")


def import_series(ws: Workspace, spec: str, tree: str | None = None, name: str | None = None,
                  author: str | None = None, *, progress=None):
    """The package's debian/patches as series NAME (default debian-TREE: one per tree) over its orig tree.

    Patches without an Author:/From: are attributed to --author, else to the
    package's Maintainer (the .dsc's field): who ships them, not an invented person.
    Returns (series, export result, DebianSource).
    """
    from kpatch_tool import export, treeupdate

    src = prepare(ws, spec, tree, progress=progress)
    repo = trees.get(ws, src.tree).repo
    label = f"Debian source {src.package} {src.version}"
    # Kept in the cache (replaced on every import): errors name a file the user can open.
    dest = ws.cache_dir / "debian" / "patches" / f"{src.package}_{apt.noepoch(src.version)}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    folder, src.order_file = unpack_patches(repo, src.patched, dest, label)
    who = author or dsc_field(src.dsc, "Maintainer") or None
    summary = (f"Debian's own patches of {src.package} {src.version} ({src.order_file}) "
               f"over upstream {trees.upstream_version(src.version)}")
    try:
        series, res = export.import_stack(ws, str(folder), src.tree, name or f"debian-{src.tree}",
                                          src.orig["tag"], who, summary=summary)
    except KptError:
        if src.new_tree:
            del ws.trees[src.tree]
        raise
    src.patches = len(res.files)
    if src.new_tree:
        treeupdate.add_tree(ws, ws.trees[src.tree])
    return series, res, src


def tree_differences(repo: Path, a: str, b: str) -> list[str]:
    """Paths whose bytes, mode or presence differ between two commits, debian/ and .pc/ aside."""
    res = proc.run(["git", "--git-dir", str(repo), "diff", "--no-renames", "--name-status", a, b, "--",
                    ".", ":(exclude)debian", ":(exclude).pc"], timeout=600)
    if not res.ok:
        raise KptError(f"git diff {a[:12]} {b[:12]} failed in {repo}: {res.stderr.strip()[:200]}")
    return [line for line in res.stdout.splitlines() if line.strip()]
