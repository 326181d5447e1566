"""`kpt series import --debian-src`: a Debian source package's own series over its orig tree.

The fast tests build a real `3.0 (quilt)` source package with dpkg-source -b and
serve it to kpt's own apt from a flat `file:` repository (dpkg-scansources), so
the whole path runs: apt fetch, the dpkg-source -x import, the orig tree, the
series, kpt apply. The slow ones do the same with Debian's qemu and linux.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from kpatch_tool import apply as applymod
from kpatch_tool import debsrc, export, trees
from kpatch_tool import workspace as wsmod
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError

MAINTAINER = "Tiny Maintainer <tiny@example.org>"

# The package's own patches: what Debian's series hold (see issue 19).
PATCHES = {
    # A subfolder, no suffix, a kernel-style first line that is not a header, diff -u with timestamps.
    "fixes/rate-limit": (
        "xen-netback: fix the rate limit\n\nThe credit was never refilled.\n\n"
        "--- tinypkg-1.0.orig/src/a.c\t2026-01-01 10:00:00.000000000 +0000\n"
        "+++ tinypkg-1.0/src/a.c\t2026-01-02 10:00:00.000000000 +0000\n"
        "@@ -1,3 +1,4 @@\n line 1\n+line 1.5\n line 2\n line 3\n"),
    # DEP-3 header.
    "dep3.patch": (
        "Description: add a greeting\n Long text.\nAuthor: Ada Lovelace <ada@example.org>\n"
        "Origin: upstream, https://example.org/c/1\nBug-Debian: https://bugs.debian.org/1\n"
        "Forwarded: not-needed\nLast-Update: 2026-01-01\n---\n"
        "--- a/README\n+++ b/README\n@@ -1 +1,2 @@\n hello\n+world\n"),
    # -p0 in the order file; a new file.
    "p0.diff": (
        "From: Grace Hopper <grace@example.org>\nSubject: new file\n\n"
        "--- /dev/null\n+++ src/new.c\n@@ -0,0 +1 @@\n+new\n"),
    # No context (diff -U0), and at an offset: the first patch added a line above it.
    "zero-context.diff": (
        "Description: change line 30\nAuthor: Ada Lovelace <ada@example.org>\n\n"
        "--- a/src/a.c\n+++ b/src/a.c\n@@ -30 +30 @@\n-line 30\n+line thirty\n"),
    # diff's note on a binary file it left out: no change to it, as quilt does.
    "binary-note.diff": (
        "Description: text beside a binary\n\n"
        "--- a/README\n+++ b/README\n@@ -1,2 +1,2 @@\n-hello\n+hallo\n world\n"
        "Binary files a/data.bin and b/data.bin differ\n"),
}
ORDER = "# the order\nfixes/rate-limit\ndep3.patch\np0.diff -p0\nzero-context.diff\nbinary-note.diff\n"


def _run(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def build_source_package(repo: Path, versions: tuple[str, ...] = ("1:1.0-2",)) -> Path:
    """A 3.0 (quilt) source package tinypkg (each version) in a flat apt repository at repo."""
    top = repo / "tinypkg-1.0"
    (top / "src").mkdir(parents=True)
    (top / "README").write_text("hello\n")
    (top / "src/a.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    (top / "data.bin").write_bytes(b"x\0y")
    (top / "run.sh").write_text("#!/bin/sh\n")
    (top / "run.sh").chmod(0o755)
    _run("tar", "-cJf", "tinypkg_1.0.orig.tar.xz", "tinypkg-1.0", cwd=repo)
    deb = top / "debian"
    (deb / "source").mkdir(parents=True)
    (deb / "source/format").write_text("3.0 (quilt)\n")
    (deb / "control").write_text(f"Source: tinypkg\nMaintainer: {MAINTAINER}\n\n"
                                 "Package: tinypkg\nArchitecture: all\nDescription: tiny\n tiny\n")
    for rel, text in PATCHES.items():
        p = deb / "patches" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (deb / "patches/series").write_text(ORDER)
    for version in versions:
        (deb / "changelog").write_text(f"tinypkg ({version}) unstable; urgency=medium\n\n  * Test.\n\n"
                                       f" -- {MAINTAINER}  Thu, 03 Dec 2026 12:00:00 +0000\n")
        _run("dpkg-source", "-b", "tinypkg-1.0", cwd=repo)
    shutil.rmtree(top)
    sources = subprocess.run(["dpkg-scansources", "."], cwd=repo, check=True, capture_output=True).stdout
    (repo / "Sources").write_bytes(sources)
    # Binary packages built from it (apt-cache show reads only this index): Source: with and
    # without its own version, as Debian writes them.
    (repo / "Packages").write_text(
        "Package: tinypkg-source\nVersion: 1:1.0-2\nArchitecture: all\nSource: tinypkg\n"
        "Maintainer: Tiny Maintainer <tiny@example.org>\nDescription: x\nFilename: ./none.deb\nSize: 1\n\n"
        "Package: tinypkg-doc\nVersion: 7.0\nArchitecture: all\nSource: tinypkg (1:1.0-2)\n"
        "Maintainer: Tiny Maintainer <tiny@example.org>\nDescription: x\nFilename: ./none2.deb\nSize: 1\n")
    return repo


@pytest.fixture
def tiny_ws(tmp_path, monkeypatch):
    """A workspace whose apt reads only the flat repository with tinypkg (no network)."""
    # setup.sh installs dpkg-dev (packages.txt, stage import): missing is a broken setup, not a skip.
    assert shutil.which("dpkg-scansources") and shutil.which("dpkg-source"), "dpkg-dev missing: run scripts/setup.sh"
    repo = build_source_package(tmp_path / "repo", ("1:1.0-2", "1:1.0-3"))
    root = tmp_path / "ws"
    (root / "patches").mkdir(parents=True)
    (root / "kpt.toml").write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n\n# my trees\n[apt]\n'
        f'sources = ["deb-src [trusted=yes] file:{repo} ./", "deb [trusted=yes] file:{repo} ./"]\n\n'
        f'[trees.other]\nsource = "{tmp_path}"\n')
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(root)
    return wsmod.load(root)


def test_parse_spec_takes_package_and_optional_version():
    assert debsrc.parse_spec("qemu") == ("qemu", None)
    assert debsrc.parse_spec("qemu=1:7.2+dfsg-7") == ("qemu", "1:7.2+dfsg-7")


@pytest.mark.parametrize("bad", ["Qemu", "-x", "q", "qemu=-1", "qemu=", "a/b", "qemu=1.0 x"])
def test_parse_spec_refuses_what_is_no_package_or_version(bad):
    with pytest.raises(UsageError):
        debsrc.parse_spec(bad)


def test_upstream_tag_drops_epoch_and_debian_revision():
    assert trees.upstream_version("1:7.2+dfsg-7+deb12u18") == "7.2+dfsg"
    assert trees.upstream_tag("6.1.176-1") == "upstream/6.1.176"
    assert trees.upstream_tag("2.0~rc1-1") == "upstream/2.0_rc1"
    assert trees.upstream_tag("1.0") == "upstream/1.0"


def test_pick_tree_prefers_the_pinned_tree_then_the_package_name_then_adds_one(tmp_ws):
    ws = tmp_ws('[trees.qemu]\nsource = "debian-src:qemu"\nversion = "1:7.2-1"\n'
                '[trees."qemu-10"]\nsource = "debian-src:qemu"\nversion = "1:10.2-1"\n'
                '[trees.linux]\nsource = "debian:linux-source-6.1"\nversion = "6.1-1"\n')
    assert debsrc.pick_tree(ws, "qemu", None, None) == ("qemu", False)
    assert debsrc.pick_tree(ws, "qemu", "10.2-1", None) == ("qemu-10", False)
    assert debsrc.pick_tree(ws, "linux", None, None) == ("linux-src", True)
    assert debsrc.pick_tree(ws, "xen", None, None) == ("xen", True)
    with pytest.raises(UsageError, match="debian:linux-source-6.1, not debian-src:linux"):
        debsrc.pick_tree(ws, "linux", None, "linux")


def test_pick_tree_asks_for_tree_when_several_trees_fit(tmp_ws):
    ws = tmp_ws('[trees.q1]\nsource = "debian-src:qemu"\n[trees.q2]\nsource = "debian-src:qemu"\n')
    with pytest.raises(UsageError, match="several trees are debian-src:qemu"):
        debsrc.pick_tree(ws, "qemu", None, None)


def test_debian_src_series_applied_by_kpt_equals_dpkg_source_x(tiny_ws, tmp_path):
    ws = tiny_ws
    series, res, src = debsrc.import_series(ws, "tinypkg")
    # No tree of the package, no version given: the archive's newest of its two.
    assert (src.tree, src.new_tree, src.version, src.patches) == ("tinypkg", True, "1:1.0-3", 5)
    assert src.orig["tag"] == "upstream/1.0" and src.order_file == "debian/patches/series"
    assert series.trees["tinypkg"].base == "upstream/1.0"
    # The tree is in kpt.toml now, pinned, the file's comments kept.
    text = (ws.root / "kpt.toml").read_text()
    assert "# my trees" in text
    assert tomllib.loads(text)["trees"]["tinypkg"] == {"source": "debian-src:tinypkg", "kind": "linux",
                                                      "version": "1:1.0-3"}
    again = wsmod.load(ws.root)
    assert trees.get(again, "tinypkg").state == "imported"
    applied = applymod.apply_series(again, series.name, force=True)
    # Byte for byte what dpkg-source -x makes, debian/ and .pc/ aside.
    dsc = src.dsc
    _run("dpkg-source", "--no-check", "-x", str(dsc), str(tmp_path / "x"), cwd=tmp_path)
    assert compare_trees(applied.worktree, tmp_path / "x") == []
    assert debsrc.tree_differences(trees.get(again, "tinypkg").repo, applied.head_commit, src.patched) == []
    # The orig tree holds no Debian patch and no debian/.
    orig = trees.checkout(again, "tinypkg", "upstream/1.0")
    assert (orig / "README").read_text() == "hello\n" and not (orig / "debian").exists()


def test_debian_src_patches_keep_subjects_authors_and_dep3_fields(tiny_ws):
    series, _, _ = debsrc.import_series(tiny_ws, "tinypkg", name="tiny")
    pats = {p.subject: p for p in series.trees["tinypkg"].patches}
    assert set(pats) == {"xen-netback: fix the rate limit", "add a greeting", "new file", "change line 30",
                         "text beside a binary"}
    assert "Ada Lovelace" in pats["add a greeting"].author
    text = pats["add a greeting"].path.read_text()
    assert "Bug-Debian: https://bugs.debian.org/1" in text and "Forwarded: not-needed" in text
    # No Author: field: the package's Maintainer shipped it (no invented person).
    assert pats["text beside a binary"].author.startswith("Tiny Maintainer")
    assert "data.bin" not in pats["text beside a binary"].path.read_text()


def test_cli_debian_src_adds_the_tree_and_export_quilt_reimports_identically(tiny_ws, tmp_path):
    r = CliRunner().invoke(main, ["series", "import", "--debian-src", "tinypkg=1.0-2"])
    assert r.exit_code == 0, r.output
    assert "added tree tinypkg" in r.output and "imported 5 patches of tinypkg 1:1.0-2" in r.output
    r = CliRunner().invoke(main, ["export", "debian-tinypkg", "--quilt", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["series", "import", str(tmp_path / "q"), "--tree", "tinypkg", "--name", "again",
                                  "--base", "upstream/1.0"])
    assert r.exit_code == 0, r.output
    first = tiny_ws.patches_dir / "debian-tinypkg/tinypkg"
    second = tiny_ws.patches_dir / "again/tinypkg"
    names = [p.name for p in sorted(first.glob("*.patch"))]
    assert len(names) == 5 and names == [p.name for p in sorted(second.glob("*.patch"))]
    for n in names:
        assert (first / n).read_bytes() == (second / n).read_bytes(), n


def test_cli_debian_src_refuses_source_and_base_beside_it(tiny_ws):
    r = CliRunner().invoke(main, ["series", "import", "x", "--debian-src", "tinypkg"])
    assert r.exit_code == 2 and "--debian-src" in r.output
    r = CliRunner().invoke(main, ["series", "import", "x"])
    assert r.exit_code == 2 and "--tree is needed" in r.output


def test_debian_src_version_the_archive_lacks_writes_nothing(tiny_ws):
    before = (tiny_ws.root / "kpt.toml").read_bytes()
    r = CliRunner().invoke(main, ["series", "import", "--debian-src", "tinypkg=9.9-1"])
    assert r.exit_code == 7 and "tinypkg 9.9-1 is not in the archive" in r.output, r.output
    assert (tiny_ws.root / "kpt.toml").read_bytes() == before
    assert not (tiny_ws.patches_dir / "debian-tinypkg").exists()


def test_upstream_ref_of_a_known_version_is_made_on_first_use(tiny_ws):
    ws = tiny_ws
    debsrc.import_series(ws, "tinypkg")
    ws = wsmod.load(ws.root)
    repo = trees.get(ws, "tinypkg").repo
    subprocess.run(["git", "--git-dir", str(repo), "tag", "-d", "upstream/1.0"], check=True, capture_output=True)
    stamp = trees._stamp(repo)
    for e in stamp["imports"].values():
        e.pop("orig", None)
    trees._write_stamp(repo, stamp)
    commit = trees.resolve(trees.get(ws, "tinypkg"), "upstream/1.0")
    assert trees.origin_of(trees.get(ws, "tinypkg"), commit)["orig"] is True
    with pytest.raises(UsageError, match="--debian-src"):
        trees.resolve(trees.get(ws, "tinypkg"), "upstream/2.0")


def test_default_version_is_the_source_of_a_pinned_binary_tree_else_the_newest(tiny_ws):
    ws = tiny_ws
    arch = debsrc._archive(ws, "x")
    assert arch.source_of("tinypkg-source", "1:1.0-2") == ("tinypkg", "1:1.0-2")
    assert arch.source_of("tinypkg-doc", "7.0") == ("tinypkg", "1:1.0-2")
    assert arch.source_of("tinypkg-doc", "9.9") is None
    assert debsrc.default_version(ws, "tinypkg", "tinypkg") == "1:1.0-3"
    ws.trees["bin"] = wsmod.TreeSpec("bin", "debian:tinypkg-source", "1:1.0-2")
    assert debsrc.default_version(ws, "tinypkg", "tinypkg") == "1:1.0-2"


def test_tree_update_keeps_a_debian_src_series_on_its_orig_tree(tiny_ws):
    """Rebasing Debian's own series onto the next Debian version would drop every patch as merged."""
    from kpatch_tool import series as seriesmod
    from kpatch_tool import treeupdate

    debsrc.import_series(tiny_ws, "tinypkg=1:1.0-2")
    ws = wsmod.load(tiny_ws.root)
    res = treeupdate.update(ws, "tinypkg", to="1:1.0-3")
    (move,) = res.moves
    assert move.action.startswith("kept on upstream/1.0") and "--debian-src tinypkg=1:1.0-3" in move.action
    s = seriesmod.load_series(wsmod.load(ws.root), "debian-tinypkg")
    assert s.trees["tinypkg"].base == "upstream/1.0" and len(s.trees["tinypkg"].patches) == 5
    assert res.pin_moved and wsmod.load(ws.root).trees["tinypkg"].version == "1:1.0-3"


def test_a_package_in_source_format_1_0_has_no_series(tmp_path):
    git_dir = tmp_path / "g"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    w = tmp_path / "w"
    (w / "debian/source").mkdir(parents=True)
    (w / "debian/source/format").write_text("1.0\n")
    (w / "debian/patches").mkdir()
    (w / "debian/patches/x.diff").write_text("x\n")
    env = {**os.environ, "GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(w)}
    subprocess.run(["git", "add", "-A"], env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], env=env, check=True)
    with pytest.raises(UsageError, match="source format '1.0'"):
        debsrc.unpack_patches(git_dir, "HEAD", tmp_path / "out", "pkg 1.0")


# ---------------------------------------------------------------- comparing trees


def compare_trees(a: Path, b: Path, skip: tuple[str, ...] = ("debian", ".pc", ".git")) -> list[str]:
    """Paths that differ between two folders in presence, bytes, symlink target or exec bit."""

    def walk(top: Path) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        for key, p, st in trees.walk_files(top, skip):
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            else:
                out[key] = ("file", bool(st.st_mode & 0o111), st.st_size, p)
        return out

    wa, wb = walk(a), walk(b)
    diff = sorted(set(wa) ^ set(wb))
    for key in sorted(set(wa) & set(wb)):
        x, y = wa[key], wb[key]
        if x[0] != y[0] or x[:3] != y[:3]:
            diff.append(key)
        elif x[0] == "file" and Path(x[3]).read_bytes() != Path(y[3]).read_bytes():
            diff.append(key)
    return diff


def test_compare_trees_sees_bytes_modes_and_missing_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "debian").mkdir(parents=True)
        (d / "x").write_text("1")
        (d / "s").write_text("#!/bin/sh\n")
    (a / "debian/only-here").write_text("ignored")
    assert compare_trees(a, b) == []
    (b / "x").write_text("2")
    (b / "s").chmod(0o755)
    (b / "new").write_text("")
    assert compare_trees(a, b) == ["new", "s", "x"]


# ---------------------------------------------------------------- Debian's qemu and linux (slow)


REAL = {
    # (package, version, the tree's source in kpt.toml)
    "qemu": ("qemu", "1:7.2+dfsg-7+deb12u18"),
    # kpt.toml pins linux-source-6.1 6.1.192-3, whose source package (linux 6.1.192-3) answers 404
    # on the mirror reachable here (dsc, orig and debian tarballs, checked 2026-12-03): 6.1.176-1,
    # bookworm's newest linux source the mirror serves, stands in.
    "linux": ("linux", "6.1.176-1"),
}


def _real_ws(tmp_path: Path, package: str) -> wsmod.Workspace:
    """A workspace of its own with a private cache: its worktrees and branches are its own.

    The shared cache's apt state is used (a symlink: the lists, not re-read), and the
    source files already fetched there are hard-linked in (not downloaded again).
    """
    project = wsmod.load(Path(__file__).resolve().parent.parent)
    cache = tmp_path / "cache"
    cache.mkdir()
    if (project.cache_dir / "apt").is_dir():
        (cache / "apt").symlink_to(project.cache_dir / "apt")
    for folder in (project.cache_dir / "debian/src").glob(f"{package}_*"):
        dest = cache / "debian/src" / folder.name
        dest.mkdir(parents=True)
        for f in folder.iterdir():
            try:
                os.link(f, dest / f.name)
            except OSError:
                shutil.copy2(f, dest / f.name)
    root = tmp_path / "ws"
    (root / "patches").mkdir(parents=True)
    apt_toml = Path(project.root / "kpt.toml").read_text().split("[trees.", 1)[0]
    (root / "kpt.toml").write_text(f'cache_dir = "{cache}"\n{apt_toml}')
    return wsmod.load(root)


def _proof(tmp_path: Path, monkeypatch, which: str) -> dict:
    package, version = REAL[which]
    ws = _real_ws(tmp_path, package)
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(ws.root)
    t0 = time.monotonic()
    series, res, src = debsrc.import_series(ws, f"{package}={version}")
    t_import = time.monotonic() - t0
    ws = wsmod.load(ws.root)
    t0 = time.monotonic()
    applied = applymod.apply_series(ws, series.name, force=True)
    t_apply = time.monotonic() - t0
    repo = trees.get(ws, src.tree).repo
    assert debsrc.tree_differences(repo, applied.head_commit, src.patched) == []
    t0 = time.monotonic()
    _run("dpkg-source", "--no-check", "-x", str(src.dsc), str(tmp_path / "x"), cwd=tmp_path)
    t_dpkg = time.monotonic() - t0
    assert compare_trees(applied.worktree, tmp_path / "x") == []
    r = CliRunner().invoke(main, ["export", series.name, "--quilt", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    again, res2 = export.import_stack(ws, str(tmp_path / "q"), src.tree, "again", src.orig["tag"])
    first, second = series.trees[src.tree].folder, again.trees[src.tree].folder
    assert res2.files == res.files
    for n in res.files:
        assert (first / n).read_bytes() == (second / n).read_bytes(), n
    numbers = {"package": package, "version": src.version, "patches": src.patches, "import_s": round(t_import, 1),
               "apply_s": round(t_apply, 1), "dpkg_source_x_s": round(t_dpkg, 1)}
    print(numbers)
    return numbers


@pytest.mark.slow
def test_debian_qemu_own_series_applied_by_kpt_equals_dpkg_source_x(tmp_path, monkeypatch):
    assert _proof(tmp_path, monkeypatch, "qemu")["patches"] >= 30


@pytest.mark.slow
@pytest.mark.heavy
def test_debian_linux_own_series_applied_by_kpt_equals_dpkg_source_x(tmp_path, monkeypatch):
    """Minutes: two dpkg-source -x of linux (1.4 GB), two imports, a full worktree."""
    try:
        assert _proof(tmp_path, monkeypatch, "linux")["patches"] >= 50
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
