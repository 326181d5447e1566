"""Trees: imports from tarballs, local repositories and git URLs."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import git
from kpatch_tool import trees
from kpatch_tool.errors import EXIT_PREREQ, EXIT_USAGE, KptError, UsageError


def _tar_xz(path: Path, members: dict[str, bytes | tuple]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(f"top/{name}")
            if isinstance(data, tuple):  # ("symlink", target) or ("exec", bytes)
                kind, payload = data
                if kind == "symlink":
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = payload
                    tf.addfile(ti)
                    continue
                ti.mode = 0o755
                data = payload
            ti.size = len(data)
            ti.mtime = 1700000000
            tf.addfile(ti, io.BytesIO(data))
    subprocess.run(["xz", "-c"], input=raw.getvalue(), stdout=open(path, "wb"), check=True)
    return path


def test_tarball_stream_gives_the_same_files_and_drops_debians_ignore_all_block(tmp_path):
    gitignore = b"*.o\n# Debian packaging\n/*\n!/debian/\n"
    tarball = _tar_xz(tmp_path / "src.tar.xz", {
        ".gitignore": gitignore, "Makefile": b"all:\n", "scripts/run.sh": ("exec", b"#!/bin/sh\n"),
        "link": ("symlink", "Makefile"), "dir/a b.c": b"int x;\n",
    })
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    fi = trees.FastImport(repo)
    count, newest = trees._tar_stream_into(fi, tarball)
    fi.commit("refs/heads/import", "msg\n", newest)
    fi.close()
    assert count == 5
    listing = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r", "import"], capture_output=True, text=True).stdout
    modes = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    assert modes == {".gitignore": "100644", "Makefile": "100644", "dir/a b.c": "100644",
                     "link": "120000", "scripts/run.sh": "100755"}
    show = lambda p: subprocess.run(["git", "--git-dir", str(repo), "show", f"import:{p}"], capture_output=True).stdout
    assert show(".gitignore") == b"*.o\n# Debian packaging\n"
    assert show("dir/a b.c") == b"int x;\n"


def test_same_tarball_gives_the_same_commit(tmp_path):
    tarball = _tar_xz(tmp_path / "src.tar.xz", {"b": b"2\n", "a": b"1\n"})
    shas = []
    for n in range(2):
        repo = tmp_path / f"r{n}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        fi = trees.FastImport(repo)
        _, newest = trees._tar_stream_into(fi, tarball)
        fi.commit("refs/heads/import", "m\n", newest)
        fi.close()
        shas.append(subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "import"], capture_output=True, text=True).stdout)
    assert shas[0] == shas[1]


def test_local_repository_is_used_in_place_and_left_untouched(make_repo, tmp_ws):
    repo = make_repo("user-linux", {"Makefile": "all:\n"})
    (repo / "Makefile").write_text("changed by the user\n")
    before = git(repo, "status", "--porcelain")
    ws = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n')
    messages = []
    tree = trees.import_tree(ws, "linux", progress=messages.append)
    assert tree.in_place and tree.state == "dirty"
    assert any("uncommitted changes" in m for m in messages)
    assert git(repo, "status", "--porcelain") == before
    assert (repo / "Makefile").read_text() == "changed by the user\n"
    assert tree.commit == git(repo, "rev-parse", "HEAD").strip()


def test_a_path_that_is_not_a_repository_is_a_usage_error(tmp_path, tmp_ws):
    (tmp_path / "plain").mkdir()
    ws = tmp_ws(f'[trees.linux]\nsource = "{tmp_path / "plain"}"\n')
    with pytest.raises(UsageError, match="is not a git repository") as exc:
        trees.import_tree(ws, "linux")
    assert exc.value.exit_code == EXIT_USAGE


def test_unknown_tree_name_names_the_workspace_file(tmp_ws):
    ws = tmp_ws('[trees.linux]\nsource = "/nonexistent"\n')
    with pytest.raises(UsageError, match=r"unknown tree 'lnux'.*kpt.toml has: linux"):
        trees.import_tree(ws, "lnux")


def test_missing_debian_package_is_named(tmp_ws, local_archive):
    line = local_archive({("linux-source-0.1", "0.1-1"): {"a": "1\n"}})
    ws = tmp_ws(f'[apt]\nsources = ["{line}"]\n[trees.linux]\nsource = "debian:linux-source-0.0-no-such"\n'
                'version = "1"\n')
    with pytest.raises(KptError, match="linux-source-0.0-no-such") as exc:
        trees.import_tree(ws, "linux")
    assert exc.value.exit_code == EXIT_PREREQ


def test_a_pinned_version_gone_from_the_archive_names_the_offers_and_the_command(tmp_ws, local_archive):
    ws = _debian_ws(tmp_ws, local_archive, pin="0.1-0")
    with pytest.raises(KptError, match=r"0\.1-0 is not in the archive.*offers: 0\.1-2.*"
                                       r"`kpt tree update linux` moves the pin to 0\.1-2") as exc:
        trees.import_tree(ws, "linux")
    assert exc.value.exit_code == EXIT_PREREQ


def test_an_unpinned_debian_tree_says_how_to_pin_it(tmp_ws):
    ws = tmp_ws('[trees.linux]\nsource = "debian:linux-source-6.1"\n')
    with pytest.raises(UsageError, match=r"\[trees.linux\] has no version.*kpt tree update linux"):
        trees.import_tree(ws, "linux")


def _debian_ws(tmp_ws, local_archive, pin="0.1-1"):
    line = local_archive({("linux-source-0.1", "0.1-1"): {"Makefile": "v1\n", "gone.c": "x\n"},
                          ("linux-source-0.1", "0.1-2"): {"Makefile": "v2\n", "new.c": "y\n"}})
    return tmp_ws(f'[apt]\nsources = ["{line}"]\n[trees.linux]\nsource = "debian:linux-source-0.1"\n'
                  f'version = "{pin}"\n')


def test_the_pinned_version_is_imported_whatever_the_archive_offers_newest(tmp_ws, local_archive):
    ws = _debian_ws(tmp_ws, local_archive, pin="0.1-1")
    t = trees.import_tree(ws, "linux")
    assert t.state == "imported" and t.ref == "debian/0.1-1"
    assert git(t.repo, "show", "debian/0.1-1:Makefile") == "v1\n"
    e = t.imports["0.1-1"]
    assert e["sha256"] and e["suite"] and e["artifact"].endswith("linux-source-0.1_0.1-1_all.deb")
    again = time.monotonic()
    assert trees.import_tree(ws, "linux").commit == t.commit
    assert time.monotonic() - again < 2.0


def test_imports_accumulate_each_version_a_child_of_the_older(tmp_ws, local_archive):
    ws = _debian_ws(tmp_ws, local_archive)
    old = trees.checkout(ws, "linux")  # a worktree on the older version
    trees.import_version(ws, "linux", "0.1-2")
    t = trees.get(ws, "linux")
    assert set(t.imports) == {"0.1-1", "0.1-2"}
    assert git(t.repo, "rev-parse", "debian/0.1-2^").strip() == t.imports["0.1-1"]["commit"]
    diff = git(t.repo, "diff", "--name-status", "debian/0.1-1", "debian/0.1-2")
    assert diff.split() == ["M", "Makefile", "D", "gone.c", "A", "new.c"]
    # The older version and what refers to it survive the newer import.
    assert (old / "Makefile").read_text() == "v1\n"
    assert trees.resolve(t, "debian/0.1-1") == t.imports["0.1-1"]["commit"]


def test_a_base_naming_a_version_not_imported_yet_is_fetched(tmp_ws, local_archive):
    ws = _debian_ws(tmp_ws, local_archive)
    t = trees.import_tree(ws, "linux")
    commit = trees.resolve(t, "debian/0.1-2")
    assert git(t.repo, "rev-parse", "debian/0.1-2").strip() == commit


def test_a_base_the_archive_no_longer_offers_says_what_it_offers(tmp_ws, local_archive):
    ws = _debian_ws(tmp_ws, local_archive)
    t = trees.import_tree(ws, "linux")
    with pytest.raises(KptError, match=r"no longer offers 0.1-0.*imported: 0.1-1.*archive: 0.1-2, 0.1-1.*kpt tree update linux") as exc:
        trees.resolve(t, "debian/0.1-0")
    assert exc.value.exit_code == EXIT_PREREQ


def test_url_import_is_cached_and_a_second_import_does_nothing(make_repo, tmp_ws):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    t1 = trees.import_tree(ws, "t")
    assert t1.state == "imported" and t1.commit == git(origin, "rev-parse", "HEAD").strip()
    stamp = (t1.repo / trees.STAMP).read_text()
    start = time.monotonic()
    t2 = trees.import_tree(ws, "t")
    assert time.monotonic() - start < 1.0
    assert (t2.repo / trees.STAMP).read_text() == stamp


def test_half_written_cache_is_never_trusted_and_a_foreign_folder_never_deleted(make_repo, tmp_ws):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    # A killed import leaves a temp folder (kpt's: removed); a folder kpt did not make stays.
    (ws.trees_dir / ".tmp-t-1234").mkdir(parents=True)
    (ws.trees_dir / "t").mkdir()
    (ws.trees_dir / "t" / "junk").write_text("someone's")
    with pytest.raises(UsageError, match="kpt did not make it"):
        trees.import_tree(ws, "t")
    assert not (ws.trees_dir / ".tmp-t-1234").exists()
    assert (ws.trees_dir / "t" / "junk").read_text() == "someone's"


def test_checkout_is_made_once_and_is_detached_at_the_base(make_repo, tmp_ws):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    path = trees.checkout(ws, "t")
    assert (path / "a").read_text() == "1\n"
    assert git(path, "rev-parse", "HEAD").strip() == git(origin, "rev-parse", "HEAD").strip()
    assert trees.checkout(ws, "t") == path


def test_unknown_ref_is_a_usage_error(make_repo, tmp_ws):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    with pytest.raises(UsageError, match="no ref 'v9.9'"):
        trees.checkout(ws, "t", "v9.9")


@pytest.mark.slow
def test_real_linux_source_import_matches_the_tarball(linux_tree, tmp_path):
    """The import of Debian's linux-source-6.1 has the tarball's files and bytes."""
    entry = linux_tree.imports[linux_tree.version]
    artifact = Path(entry["artifact"])
    # A fetched .deb, or the installed tarball an import made before pinned fetching recorded.
    tarball = (trees._tarball_from_deb(artifact, "linux-source-6.1", tmp_path) if artifact.suffix == ".deb"
               else artifact)
    listing = subprocess.run(["git", "--git-dir", str(linux_tree.repo), "ls-tree", "-r", "--full-tree", linux_tree.ref],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    in_git = {l.split("\t", 1)[1]: l.split()[2] for l in listing}
    names = subprocess.run(["tar", "tJf", str(tarball)], capture_output=True, text=True, check=True).stdout.splitlines()
    files = [n.split("/", 1)[1] for n in names if not n.endswith("/") and "/" in n and n.split("/", 1)[1]]
    assert len(in_git) == len(files) == entry["files"]
    assert set(in_git) == set(files)
    rng = random.Random(7)
    # tar writes members in archive order whatever order they are asked in: keep that order.
    order = {f: i for i, f in enumerate(files)}
    sample = sorted(rng.sample([f for f in files if f != ".gitignore"], 25), key=order.__getitem__)
    data = subprocess.run(["tar", "xJOf", str(tarball), *[f"linux-source-6.1/{f}" for f in sample]],
                          capture_output=True, check=True).stdout
    blobs = b"".join(subprocess.run(["git", "--git-dir", str(linux_tree.repo), "cat-file", "blob", in_git[f]],
                                    capture_output=True, check=True).stdout for f in sample)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(blobs).hexdigest()


@pytest.mark.slow
def test_real_both_6_1_versions_are_tags_in_one_repository(linux_tree, project_ws):
    """The pinned 6.1 and the one before it live side by side; the older still checks out."""
    older = "6.1.192-2" if linux_tree.version != "6.1.192-2" else "6.1.192-1"
    entry = trees.import_version(project_ws, "linux", older)
    t = trees.get(project_ws, "linux")
    assert {older, linux_tree.version} <= set(t.imports)
    # What Debian changed between the two (a version imported after a newer one has no parent:
    # the newer one's commit is never rewritten, something may refer to it).
    changed = git(t.repo, "diff", "--name-only", trees.version_tag(older), trees.version_tag(linux_tree.version))
    assert changed.strip()
    path = trees.checkout(project_ws, "linux", trees.version_tag(older))
    assert (path / "Makefile").is_file()
    assert git(path, "rev-parse", "HEAD").strip() == entry["commit"]
