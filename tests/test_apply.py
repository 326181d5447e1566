"""kpt apply: worktree and branch, no-op reruns, depends, conflicts, merged patches."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from kpatch_tool import apply as ap
from kpatch_tool import series as sm
from kpatch_tool.cli import main
from kpatch_tool.errors import ApplyError, UsageError

from conftest import git


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def user_state(repo):
    """What the user sees of their own repo: checkout, status, branches, stash."""
    branches = [b for b in git(repo, "branch", "--format=%(refname:short) %(objectname)").splitlines()
                if not b.startswith("kpt/")]
    return (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"),
            git(repo, "status", "--porcelain"), branches, git(repo, "stash", "list"))


def test_apply_makes_branch_in_worktree_and_leaves_user_checkout(series_ws, series_repo, demo_series):
    (series_repo / "README").write_text("user edit\n")
    git(series_repo, "stash")
    (series_repo / "Makefile").write_text("user's uncommitted edit\n")
    before = user_state(series_repo)
    res = ap.apply_series(series_ws, "demo")
    assert res.branch == "kpt/demo/v1"
    assert res.worktree == series_ws.cache_dir / "worktrees" / "linux" / "kpt-demo-v1"
    assert (res.worktree / "drivers/net/new.c").read_text() == "int new_driver;\n"
    assert git(series_repo, "log", "--format=%s", "v1..kpt/demo/v1").splitlines() == [
        "net: add new.c", "blkfront: fix line 10", "netfront: fix line 5"]
    # Author kept from the patch, committer fixed by kpt.
    assert git(series_repo, "log", "-1", "--format=%an|%cn", "kpt/demo/v1~2").strip() == "Ada Lovelace|kpatch-tool"
    assert user_state(series_repo) == before
    assert (series_repo / "Makefile").read_text() == "user's uncommitted edit\n"


def test_rerun_is_a_noop_and_rebuild_gives_same_commit_ids(series_ws, demo_series):
    first = ap.apply_series(series_ws, "demo")
    again = ap.apply_series(series_ws, "demo")
    assert again.noop and again.head_commit == first.head_commit
    shutil.rmtree(first.worktree)
    ap.stamp_path(first.worktree).write_text('{"head": "%s", "digest": "x"}' % first.head_commit)
    rebuilt = ap.apply_series(series_ws, "demo")
    assert not rebuilt.noop and rebuilt.head_commit == first.head_commit


def test_changed_inputs_rebuild_the_branch(series_ws, demo_series):
    first = ap.apply_series(series_ws, "demo")
    order = demo_series.trees["linux"].order_file
    order.write_text("".join(l for l in order.read_text().splitlines(True) if "new.c" not in l))
    second = ap.apply_series(series_ws, "demo")
    assert not second.noop and len(second.applied) == 2
    assert second.head_commit != first.head_commit
    assert not (second.worktree / "drivers/net/new.c").exists()


def test_a_series_without_the_tree_applies_what_its_depends_carry_there(series_ws, series_repo, demo_series):
    # A test variant with no patches of its own and no [trees.linux]: it still gets demo's.
    d = series_ws.patches_dir / "variant"
    d.mkdir()
    (d / "series.toml").write_text('name = "variant"\nversion = 1\nsummary = "v"\ndepends = ["demo"]\n')
    res = ap.apply_series(series_ws, "variant", "linux")
    assert git(series_repo, "log", "--format=%s", "v1..kpt/variant/v1").splitlines() == [
        "net: add new.c", "blkfront: fix line 10", "netfront: fix line 5"]
    assert res.branch == "kpt/variant/v1"
    with pytest.raises(UsageError, match="no patches for tree 'xen'"):
        ap.apply_series(series_ws, "variant", "xen")


def test_a_worktree_in_use_by_another_kpt_is_refused_not_reset(series_ws, demo_series):
    import fcntl
    wt = ap.plan(series_ws, "demo").wt
    lock = wt.parent / f"{wt.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    other = open(lock, "a+")  # another process's open file: flock does not know it is us
    other.write("pid 4242: kpt ci demo\n")
    other.flush()
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(UsageError, match=r"in use by another kpt \(pid 4242: kpt ci demo\)"):
            ap.apply_series(series_ws, "demo")
        assert not wt.exists()
    finally:
        other.close()
    assert ap.apply_series(series_ws, "demo").worktree == wt
    assert ap.apply_series(series_ws, "demo").noop  # our own claim does not lock us out


def test_depends_are_applied_first_once(series_ws, series_repo, demo_series):
    # "top" depends on "demo"; its own patch goes on top of demo's three.
    top = sm.new_series(series_ws, "top", ["linux"], base="v1")
    top.toml_path.write_text(top.toml_path.read_text().replace("depends = []", 'depends = ["demo"]'))
    src = demo_series.trees["linux"].patches[0].path.read_bytes()
    patch = (src.replace(b"net line 5 fixed", b"net line 5 fixed twice")
             .replace(b"-net line 5\n", b"-net line 5 fixed\n")
             .replace(b"netfront: fix line 5", b"netfront: fix it again"))
    patch = b"".join(l for l in patch.splitlines(True) if not l.startswith(b"index "))
    (top.trees["linux"].folder / "0001-again.patch").write_bytes(patch)
    top.trees["linux"].order_file.write_text("0001-again.patch\n")
    res = ap.apply_series(series_ws, "top")
    subjects = git(series_repo, "log", "--format=%s", "v1..kpt/top/v1").splitlines()
    assert subjects == ["netfront: fix it again", "net: add new.c", "blkfront: fix line 10", "netfront: fix line 5"]
    assert res.series_base == git(series_repo, "rev-parse", "kpt/top/v1~1").strip()


def test_conflict_stops_with_report_then_abort(series_ws, series_repo, demo_series):
    r = kpt(series_ws, "apply", "demo", "--onto", "conflict")
    assert r.exit_code == 3, r.output
    out = r.output
    assert "demo: 0001-netfront-fix-line-5.patch (netfront: fix line 5) does not apply on conflict" in out
    assert "drivers/net/netfront.c" in out  # the file and hunk that failed
    wt = series_ws.cache_dir / "worktrees" / "linux" / "kpt-demo-v1"
    assert f"worktree: {wt}" in out and "kpt apply demo --continue" in out and "--abort" in out
    assert ap.am_in_progress(wt)
    # Running apply again does not discard the stopped state.
    with pytest.raises(ApplyError, match="stopped apply"):
        ap.apply_series(series_ws, "demo", onto="conflict")
    r = kpt(series_ws, "apply", "demo", "--abort")
    assert r.exit_code == 0, r.output
    assert not ap.am_in_progress(wt)
    res = ap.apply_series(series_ws, "demo")  # back to the normal base: fine
    assert len(res.applied) == 3


def test_conflict_resolved_and_continued(series_ws, series_repo, demo_series):
    with pytest.raises(ApplyError):
        ap.apply_series(series_ws, "demo", onto="conflict")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    f = wt / "drivers/net/netfront.c"
    text = f.read_text()
    if "<<<<<<<" in text:
        import re
        text = re.sub(r"<<<<<<<.*?\n.*?=======\n(.*?)>>>>>>>.*?\n", r"\1", text, flags=re.S)
    f.write_text(text.replace("net line 5 upstream\n", "net line 5 fixed\n"))
    git(wt, "add", "drivers/net/netfront.c")
    res, pend = ap.continue_apply(series_ws, "demo")
    assert len(res.applied) == 3 and not ap.am_in_progress(wt)
    assert "net line 5 fixed" in (wt / "drivers/net/netfront.c").read_text()


def test_merged_patch_is_skipped_with_a_note(series_ws, series_repo, demo_series):
    notes = []
    res = ap.apply_series(series_ws, "demo", onto="merged", say=notes.append)
    assert [p.file for p in res.skipped_merged] == ["0002-blkfront-fix-line-10.patch"]
    assert len(res.applied) == 2
    assert any("0002-blkfront-fix-line-10.patch" in n and "already in merged" in n for n in notes)
    r = kpt(series_ws, "apply", "demo", "--onto", "merged-later")
    assert r.exit_code == 0, r.output
    assert "skipped 0002-blkfront-fix-line-10.patch" in r.output


def test_dirty_worktree_is_never_discarded(series_ws, demo_series):
    res = ap.apply_series(series_ws, "demo")
    (res.worktree / "README").write_text("my edit\n")
    order = demo_series.trees["linux"].order_file
    order.write_text(order.read_text().replace("0003-net-add-new.c.patch\n", ""))
    with pytest.raises(UsageError, match=r"has uncommitted changes \(README\)"):
        ap.apply_series(series_ws, "demo")
    assert (res.worktree / "README").read_text() == "my edit\n"


def test_user_commits_on_our_branch_need_export_or_force(series_ws, demo_series):
    res = ap.apply_series(series_ws, "demo")
    (res.worktree / "README").write_text("my edit\n")
    git(res.worktree, "commit", "-qam", "my commit")
    order = demo_series.trees["linux"].order_file
    order.write_text(order.read_text().replace("0003-net-add-new.c.patch\n", ""))
    r = kpt(series_ws, "apply", "demo")
    assert r.exit_code == 2 and "kpt export demo" in r.output
    again = ap.apply_series(series_ws, "demo", force=True)
    assert len(again.applied) == 2


@pytest.mark.parametrize("args, code, message", [
    (["apply", "demo", "--onto", "no-such-ref"], 2, "no ref 'no-such-ref'"),
    (["apply", "nope"], 2, "series 'nope'"),
    (["apply", "demo", "--tree", "qemu"], 2, "has no patches for tree 'qemu'"),
    (["apply", "demo", "--continue"], 2, "no stopped apply"),
])
def test_apply_bad_input(series_ws, demo_series, args, code, message):
    r = kpt(series_ws, *args)
    assert r.exit_code == code, r.output
    assert message in r.output
    assert not (series_ws.cache_dir / "worktrees" / "linux" / "kpt-demo-v1").exists()


def test_bad_patch_writes_nothing(series_ws, demo_series, series_repo):
    demo_series.trees["linux"].patches[1].path.write_bytes(b"\x00\x01junk")
    r = kpt(series_ws, "apply", "demo")
    assert r.exit_code == 2 and "0002-blkfront-fix-line-10.patch: not a patch" in r.output
    assert "kpt/demo/v1" not in git(series_repo, "branch")
