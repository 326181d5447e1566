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
    _resolve_conflict(wt)
    res, pend = ap.continue_apply(series_ws, "demo")
    assert len(res.applied) == 3 and not ap.am_in_progress(wt)
    assert "net line 5 fixed" in (wt / "drivers/net/netfront.c").read_text()


def _resolve_conflict(wt):
    f = wt / "drivers/net/netfront.c"
    text = f.read_text()
    if "<<<<<<<" in text:
        import re
        text = re.sub(r"<<<<<<<.*?\n.*?=======\n(.*?)>>>>>>>.*?\n", r"\1", text, flags=re.S)
    f.write_text(text.replace("net line 5 upstream\n", "net line 5 fixed\n"))
    git(wt, "add", "drivers/net/netfront.c")


def test_conflict_finished_by_hand_then_continued(series_ws, series_repo, demo_series):
    """`git am --continue` run in the worktree by hand: kpt takes the result
    (before, its journal said stopped while git said nothing to continue, and
    neither --continue, --abort nor export got out of it)."""
    with pytest.raises(ApplyError):
        ap.apply_series(series_ws, "demo", onto="conflict")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    _resolve_conflict(wt)
    git(wt, "am", "--continue")
    assert not ap.am_in_progress(wt)
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code != 0 and "stopped on a conflict" in r.output
    r = kpt(series_ws, "apply", "demo", "--continue")
    assert r.exit_code == 0, r.output
    assert ap.unfinished(wt) is None
    assert ap.read_stamp(wt)["resolved"] is True
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 0, r.output
    assert b"net line 5 upstream" in demo_series.trees["linux"].patches[0].path.read_bytes()


def test_conflict_given_up_by_hand_is_not_taken(series_ws, series_repo, demo_series):
    """`git am --abort` by hand leaves the base alone: --continue refuses to
    take it for the series, --abort still cleans up."""
    with pytest.raises(ApplyError):
        ap.apply_series(series_ws, "demo", onto="conflict")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    git(wt, "am", "--abort")
    r = kpt(series_ws, "apply", "demo", "--continue")
    assert r.exit_code == 3, r.output
    assert "does not hold the 3 patches" in r.output
    r = kpt(series_ws, "apply", "demo", "--abort")
    assert r.exit_code == 0, r.output
    assert ap.unfinished(wt) is None
    assert len(ap.apply_series(series_ws, "demo").applied) == 3


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


# ---------------------------------------------------------------- issue 18: interrupted applies, ownership

import json
import os
import subprocess
import sys
from pathlib import Path


def release_claims():
    for fh in ap._claimed.values():
        fh.close()
    ap._claimed.clear()


def kpt_child(ws, *args, crash_at=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPT_TEST_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    if crash_at:
        env["KPT_TEST_CRASH_AT"] = str(crash_at)
    return subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(ws.root), *args],
                          capture_output=True, text=True, env=env)


def patches_state(series):
    return {p.name: p.read_bytes() for p in sorted(series.path.rglob("*")) if p.is_file()}


def test_apply_killed_at_every_step_is_finished_by_the_next_run(series_ws, series_repo, demo_series):
    clean = ap.apply_series(series_ws, "demo", onto="v2")
    before = patches_state(demo_series)
    release_claims()
    killed = 0
    for step in range(1, 30):
        # Start each round from the old branch (on v1), as a user moving the series to v2 would.
        assert kpt_child(series_ws, "apply", "demo").returncode == 0
        r = kpt_child(series_ws, "apply", "demo", "--onto", "v2", crash_at=step)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        killed += 1
        # Exporting now must never turn the half-made branch into the series.
        r = kpt_child(series_ws, "export", "demo")
        assert r.returncode in (0, 2), r.stderr
        assert patches_state(demo_series) == before, f"step {step}: export changed the patches"
        r = kpt_child(series_ws, "apply", "demo", "--onto", "v2")
        assert r.returncode == 0, f"step {step}: {r.stderr}"
        assert "not made by kpt" not in r.stderr and "did not make" not in r.stderr
        assert git(series_repo, "rev-parse", "kpt/demo/v1").strip() == clean.head_commit
    assert killed >= 4  # before worktree reset, before am, before the stamp, before the journal goes


def test_an_interrupted_worktree_add_is_undone(series_ws, series_repo, demo_series):
    p = ap.plan(series_ws, "demo")
    ap.claim_worktree(p.wt)
    ap._journal(p, "worktree-add")
    # What a kill inside `git worktree add -B` leaves: the branch, a registered, locked,
    # half-checked-out worktree.
    git(series_repo, "worktree", "add", "-q", "-B", p.branch, str(p.wt), p.base_commit)
    (p.wt / "Makefile").unlink()
    (p.wt / "drivers").rename(p.wt.parent / "gone")
    admin = Path(git(p.wt, "rev-parse", "--git-dir").strip())
    (admin / "locked").write_text("initializing")
    res = ap.apply_series(series_ws, "demo")
    assert len(res.applied) == 3 and not ap.dirty_files(res.worktree)
    assert not ap.journal_path(p.wt).exists()


def test_a_wiped_cache_does_not_disown_kpts_branch(series_ws, series_repo, demo_series):
    first = ap.apply_series(series_ws, "demo")
    import shutil
    shutil.rmtree(series_ws.cache_dir)  # the branch in the user's repo stays
    r = kpt(series_ws, "apply", "demo")
    assert r.exit_code == 0, r.output
    assert git(series_repo, "rev-parse", "kpt/demo/v1").strip() == first.head_commit


def test_a_branch_with_the_users_commits_is_still_refused_without_a_stamp(series_ws, series_repo, demo_series):
    res = ap.apply_series(series_ws, "demo")
    (res.worktree / "README").write_text("mine\n")
    git(res.worktree, "commit", "-qam", "my work")
    ap.stamp_path(res.worktree).unlink()
    r = kpt(series_ws, "apply", "demo", "--onto", "v2")
    assert r.exit_code == 2 and "commits kpt did not make" in r.output, r.output
    assert git(series_repo, "log", "-1", "--format=%s", "kpt/demo/v1").strip() == "my work"


def test_two_workspaces_sharing_a_cache_never_touch_each_others_branches(tmp_path, series_ws, series_repo,
                                                                         demo_series, make_repo):
    from kpatch_tool import export
    from kpatch_tool import workspace as wsmod
    mine = ap.apply_series(series_ws, "demo")
    # A second workspace, same cache, its own tree called `linux` and its own series `demo`.
    other_repo = tmp_path / "other-src"
    git(tmp_path, "clone", "-q", str(series_repo), str(other_repo))
    root = tmp_path / "ws2"
    (root / "patches").mkdir(parents=True)
    (root / "kpt.toml").write_text(f'cache_dir = "{series_ws.cache_dir}"\n[trees.linux]\nsource = "{other_repo}"\n')
    ws2 = wsmod.load(root)
    export.import_stack(ws2, "v1..origin/work", "linux", name="demo")
    release_claims()
    r = kpt(ws2, "apply", "demo")
    assert r.exit_code == 2, r.output
    assert "belong to workspace" in r.output and str(series_ws.root) in r.output
    assert git(series_repo, "rev-parse", "kpt/demo/v1").strip() == mine.head_commit
    assert ap.read_stamp(mine.worktree)["workspace"] == str(series_ws.root.resolve())


def test_a_resolved_conflict_is_not_rebuilt_away(series_ws, series_repo, demo_series):
    with pytest.raises(ApplyError):
        ap.apply_series(series_ws, "demo", onto="conflict")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    (wt / "drivers/net/netfront.c").write_text(
        git(series_repo, "show", "conflict:drivers/net/netfront.c").replace("net line 5 upstream", "net line 5 fixed"))
    git(wt, "add", "drivers/net/netfront.c")
    ap.continue_apply(series_ws, "demo")
    order = demo_series.trees["linux"].order_file
    order.write_text(order.read_text().replace("0003-net-add-new.c.patch\n", ""))
    r = kpt(series_ws, "apply", "demo", "--onto", "conflict")
    assert r.exit_code == 2 and "conflict resolution" in r.output and "kpt export demo" in r.output, r.output


def test_no_space_left_is_one_line_exit_2(series_ws, demo_series, monkeypatch):
    from kpatch_tool import proc
    real = proc.run

    def full_disk(argv, **kw):
        if "worktree" in argv and "add" in argv:
            return proc.ProcResult(list(argv), 128, "", "error: unable to write file drivers/net/netfront.c\n"
                                   "fatal: write error: No space left on device\n", 0.1)
        return real(argv, **kw)

    monkeypatch.setattr(proc, "run", full_disk)
    r = kpt(series_ws, "apply", "demo")
    assert r.exit_code == 2, r.output
    assert "no space left on " in r.output and "Traceback" not in r.output
    monkeypatch.setattr(proc, "run", real)
    # The journal lets the next run undo the half-made worktree.
    assert len(ap.apply_series(series_ws, "demo").applied) == 3

    def no_space(path, data):
        raise OSError(28, "No space left on device", str(path))

    from kpatch_tool import safefs
    monkeypatch.setattr(safefs, "write_durable", no_space)
    order = demo_series.trees["linux"].order_file
    order.write_text(order.read_text().replace("0003-net-add-new.c.patch\n", ""))
    r = kpt(series_ws, "apply", "demo")
    assert r.exit_code == 2 and "no space left on " in r.output and "Traceback" not in r.output, r.output
