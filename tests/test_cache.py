"""`kpt cache clean`: results dropped, work in progress never."""

from __future__ import annotations

from conftest import git
from kpatch_tool import cache, trees


def test_clean_drops_results_and_build_stamps_but_keeps_trees(tmp_ws, make_repo):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    trees.import_tree(ws, "t")
    for d in ("boots/k1", "configs", "images"):
        (ws.cache_dir / d).mkdir(parents=True)
        (ws.cache_dir / d / "x").write_text("cached")
    stamp = ws.cache_dir / "builds/t/p-1/kpt-build.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    (stamp.parent / "vmlinux").write_text("object")
    res = cache.clean(ws)
    assert not (ws.cache_dir / "boots").exists() and not (ws.cache_dir / "images").exists()
    assert not stamp.exists() and (stamp.parent / "vmlinux").exists()
    assert (ws.trees_dir / "t").is_dir()
    assert res.freed > 0


def test_clean_all_keeps_a_worktree_with_uncommitted_work_and_its_repository(tmp_ws, make_repo):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    wt = trees.checkout(ws, "t")
    (wt / "a").write_text("a user's fix in progress\n")
    res = cache.clean(ws, everything=True)
    assert [p for p, _ in res.kept] == [wt]
    assert (wt / "a").read_text() == "a user's fix in progress\n"
    assert git(wt, "status", "--porcelain").strip() == "M a"


def test_clean_all_dry_run_removes_nothing(tmp_ws, make_repo):
    origin = make_repo("origin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.t]\nsource = "file://{origin}"\n')
    trees.import_tree(ws, "t")
    res = cache.clean(ws, everything=True, dry_run=True)
    assert ws.trees_dir in res.removed and (ws.trees_dir / "t").is_dir()


def test_clean_never_touches_files_of_its_own_in_the_cache_folder(tmp_ws):
    ws = tmp_ws()
    ws.cache_dir.mkdir(parents=True, exist_ok=True)
    (ws.cache_dir / "notes.txt").write_text("mine")
    cache.clean(ws, everything=True)
    assert (ws.cache_dir / "notes.txt").read_text() == "mine"
