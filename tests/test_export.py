"""kpt export / series import / rebase: byte-stable round trips and stack imports."""

from __future__ import annotations


import pytest
from click.testing import CliRunner

from kpatch_tool import apply as ap
from kpatch_tool import export
from kpatch_tool import series as sm
from kpatch_tool.cli import main
from kpatch_tool.errors import ApplyError, UsageError

from conftest import git


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in sorted(folder.iterdir())}


def test_patches_are_in_the_normal_form(demo_series):
    data = demo_series.trees["linux"].patches[1].path.read_text()
    assert data.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
    assert "Subject: [PATCH] blkfront: fix line 10\n" in data
    assert " drivers/block/blkfront.c | 2 +-\n" in data  # the diffstat is kept
    assert "\n-- \n" not in data  # no git version signature
    assert "Signed-off-by: Ada Lovelace <ada@example.org>\n" in data


def test_apply_export_round_trip_keeps_every_byte(series_ws, demo_series):
    folder = demo_series.trees["linux"].folder
    order = demo_series.trees["linux"].order_file
    order.write_text("# my comment\n" + order.read_text())
    (folder / "NOTES").write_text("kept\n")
    before = snapshot(folder)
    ap.apply_series(series_ws, "demo")
    res = export.export_series(series_ws, "demo")
    assert not res.touched and len(res.unchanged) == 3
    assert snapshot(folder) == before  # same bytes, same files (inodes kept)
    # The export refreshed the stamp: the next apply has nothing to do.
    assert ap.apply_series(series_ws, "demo").noop


def test_export_of_an_edited_branch_changes_only_that_patch(series_ws, demo_series):
    res = ap.apply_series(series_ws, "demo")
    folder = demo_series.trees["linux"].folder
    before = {p.name: p.read_bytes() for p in folder.glob("*.patch")}
    wt = res.worktree
    (wt / "drivers/net/new.c").write_text("int new_driver = 1;\n")
    git(wt, "commit", "-q", "-a", "--amend", "--no-edit")
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 0, r.output
    assert "2 unchanged, 1 changed" in r.output
    after = {p.name: p.read_bytes() for p in folder.glob("*.patch")}
    assert after["0001-netfront-fix-line-5.patch"] == before["0001-netfront-fix-line-5.patch"]
    assert after["0002-blkfront-fix-line-10.patch"] == before["0002-blkfront-fix-line-10.patch"]
    assert b"+int new_driver = 1;" in after["0003-net-add-new.c.patch"]
    assert ap.apply_series(series_ws, "demo").noop


def test_export_from_a_range(series_ws, series_repo, demo_series):
    res = export.export_series(series_ws, "demo", from_branch="v1..work~1")
    assert res.files == ["0001-netfront-fix-line-5.patch", "0002-blkfront-fix-line-10.patch"]
    assert res.removed == ["0003-net-add-new.c.patch"]
    assert sm.load_series(series_ws, "demo").trees["linux"].order_file.read_text().endswith(
        "0001-netfront-fix-line-5.patch\n0002-blkfront-fix-line-10.patch\n")


def test_export_without_branch_is_an_error(series_ws, demo_series):
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 2 and "no branch kpt/demo/v1" in r.output


def test_import_mbox(series_ws, series_repo, demo_series, tmp_path):
    mbox = tmp_path / "stack.mbox"
    mbox.write_text(git(series_repo, "format-patch", "--stdout", "v1..work"))
    s, res = export.import_stack(series_ws, str(mbox), "linux", name="from-mbox", base="v1")
    assert [p.subject for p in s.trees["linux"].patches] == [p.subject for p in demo_series.trees["linux"].patches]
    # Same commits in, same bytes out, whichever way they came.
    for a, b in zip(s.trees["linux"].patches, demo_series.trees["linux"].patches):
        assert a.data() == b.data()


def test_import_quilt_folder(series_ws, series_repo, tmp_path):
    quilt = tmp_path / "quilt"
    quilt.mkdir()
    diff1 = git(series_repo, "diff", "v1", "work~2")
    diff2 = git(series_repo, "diff", "work~2", "work~1")
    (quilt / "fix-net.patch").write_text("Fix the net line\n\nLonger text.\n\nAuthor: Quinn Quilt <q@example.org>\n---\n" + diff1)
    (quilt / "fix-blk.patch").write_text("From: Bea Block <bea@example.org>\nSubject: Fix the blk line\n\n" + diff2)
    (quilt / "series").write_text("# quilt series\nfix-net.patch -p1\nfix-blk.patch\n")
    s, res = export.import_stack(series_ws, str(quilt), "linux", name="from-quilt")
    patches = s.trees["linux"].patches
    assert [(p.subject, p.author) for p in patches] == [
        ("Fix the net line", "Quinn Quilt <q@example.org>"),
        ("Fix the blk line", "Bea Block <bea@example.org>")]
    assert ap.apply_series(series_ws, "from-quilt").applied


def test_import_quilt_without_author_needs_one(series_ws, series_repo, tmp_path):
    quilt = tmp_path / "q2"
    quilt.mkdir()
    (quilt / "a.patch").write_text("Just a description\n---\n" + git(series_repo, "diff", "v1", "work~2"))
    (quilt / "series").write_text("a.patch\n")
    with pytest.raises(UsageError, match=r"a.patch: no author"):
        export.import_stack(series_ws, str(quilt), "linux", name="q2")
    assert not (series_ws.patches_dir / "q2").exists()
    s, _ = export.import_stack(series_ws, str(quilt), "linux", name="q2", author="Pat Doe <pat@example.org>")
    assert s.trees["linux"].patches[0].author == "Pat Doe <pat@example.org>"


def test_import_folder_of_patches_via_cli(series_ws, series_repo, tmp_path):
    out = tmp_path / "pf"
    git(series_repo, "format-patch", "-q", "-o", str(out), "v1..work")
    r = kpt(series_ws, "series", "import", str(out), "--tree", "linux", "--name", "pf")
    assert r.exit_code == 0, r.output
    assert "imported 3 patches" in r.output


@pytest.mark.parametrize("mangle, code, message", [
    (lambda d: d[: d.index(b"-blk line 10") + 3], 2, "patch is truncated"),
    (lambda d: d.replace(b"\n", b"\r\n"), 2, "CRLF line endings"),
    (lambda d: b"\x00\x01\x02" * 50, 2, "binary data"),
    (lambda d: d.replace(b"a/drivers/block/blkfront.c", b"a/../outside.c"), 2, "outside the tree"),
    (lambda d: d.replace(b"-blk line 10\n", b"-blk line 99\n"), 3, "'blkfront: fix line 10' does not apply"),
])
def test_import_bad_mbox_writes_nothing(series_ws, series_repo, tmp_path, mangle, code, message):
    mbox = tmp_path / "bad.mbox"
    mbox.write_bytes(mangle(git(series_repo, "format-patch", "--stdout", "v1..work").encode()))
    r = kpt(series_ws, "series", "import", str(mbox), "--tree", "linux", "--name", "bad")
    assert r.exit_code == code, r.output
    assert message in r.output and "bad.mbox" in r.output
    assert not (series_ws.patches_dir / "bad").exists()


def test_import_into_unknown_tree(series_ws, tmp_path):
    r = kpt(series_ws, "series", "import", str(tmp_path), "--tree", "nope")
    assert r.exit_code == 2 and "unknown tree 'nope'" in r.output


def test_rebase_drops_merged_and_updates_base(series_ws, series_repo, demo_series):
    r = kpt(series_ws, "rebase", "demo", "--onto", "merged-later", "--bump")
    assert r.exit_code == 0, r.output
    assert "dropped   0002-blkfront-fix-line-10.patch" in r.output
    s = sm.load_series(series_ws, "demo")
    assert s.version == 2 and s.trees["linux"].base == "merged-later"
    assert "rebased onto merged-later" in s.changelog[2]
    assert [p.subject for p in s.trees["linux"].patches] == ["netfront: fix line 5", "net: add new.c"]
    # Without --bump the version stays.
    r = kpt(series_ws, "rebase", "demo", "--onto", "v2")
    assert r.exit_code == 0, r.output
    s = sm.load_series(series_ws, "demo")
    assert s.version == 2 and s.trees["linux"].base == "v2"


def test_rebase_conflict_then_continue_finishes_the_rebase(series_ws, series_repo, demo_series):
    with pytest.raises(ApplyError):
        export.rebase_series(series_ws, "demo", "conflict")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    (wt / "drivers/net/netfront.c").write_text(
        git(series_repo, "show", "conflict:drivers/net/netfront.c").replace("net line 5 upstream", "net line 5 fixed"))
    git(wt, "add", "drivers/net/netfront.c")
    r = kpt(series_ws, "apply", "demo", "--continue")
    assert r.exit_code == 0, r.output
    assert "rebased onto conflict" in r.output and "refreshed 0001-netfront-fix-line-5.patch" in r.output
    s = sm.load_series(series_ws, "demo")
    assert s.trees["linux"].base == "conflict"
    assert "-net line 5 upstream" in s.trees["linux"].patches[0].path.read_text()


# ---------------------------------------------------------------- issue 18: never lose the user's work

import json
import os
import subprocess
import sys
from pathlib import Path

from kpatch_tool import safefs


def tree_state(folder):
    """Every file of a series folder (series.toml and tree folders), by name: bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def test_export_refuses_while_an_apply_is_stopped_on_a_conflict(series_ws, demo_series):
    folder = demo_series.path
    before = tree_state(folder)
    r = kpt(series_ws, "apply", "demo", "--onto", "conflict")
    assert r.exit_code == 3, r.output
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 2, r.output
    assert "stopped on a conflict" in r.output
    assert "kpt apply demo --continue" in r.output and "kpt apply demo --abort" in r.output
    assert tree_state(folder) == before
    # Given up: the branch sits on the base and holds no series; exporting it would drop every patch.
    assert kpt(series_ws, "apply", "demo", "--abort").exit_code == 0
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 2 and "holds no finished apply" in r.output, r.output
    assert tree_state(folder) == before


def test_export_refuses_while_another_kpt_holds_the_worktree(series_ws, demo_series):
    import fcntl
    ap.apply_series(series_ws, "demo")
    folder = demo_series.path
    before = tree_state(folder)
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.seek(0); f.truncate(); f.write('pid 4242: kpt ci demo'); f.flush(); print('held', flush=True); "
            "time.sleep(60)")
    release_claims()
    holder = subprocess.Popen([sys.executable, "-c", code, str(wt.parent / f"{wt.name}.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(series_ws.root),
                            "export", "demo"], capture_output=True, text=True, env=_env())
        assert r.returncode == 2, r.stderr
        assert "in use by another kpt (pid 4242: kpt ci demo)" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert tree_state(folder) == before
    del fcntl


def test_export_refuses_after_an_interrupted_apply(series_ws, demo_series):
    ap.apply_series(series_ws, "demo")
    wt = ap.worktree_path(series_ws, "linux", "demo", 1)
    p = ap.plan(series_ws, "demo")
    ap._journal(p, "am")  # what a kill inside `git am` leaves
    before = tree_state(demo_series.path)
    r = kpt(series_ws, "export", "demo")
    assert r.exit_code == 2 and "interrupted" in r.output and "`kpt apply demo`" in r.output, r.output
    assert tree_state(demo_series.path) == before
    assert len(ap.apply_series(series_ws, "demo").applied) == 3
    assert not ap.journal_path(wt).exists()
    assert kpt(series_ws, "export", "demo").exit_code == 0
    assert tree_state(demo_series.path) == before


def test_export_leaves_patches_the_order_file_does_not_list(series_ws, series_repo, demo_series):
    folder = demo_series.trees["linux"].folder
    draft = folder / "0009-my-draft.patch"
    draft.write_text("half-written, not in the order file yet\n")
    r = kpt(series_ws, "export", "demo", "--from", "v1..work~1")
    assert r.exit_code == 0, r.output
    assert draft.read_text() == "half-written, not in the order file yet\n"
    assert "0009-my-draft.patch" in r.output and "not in the order file" in r.output
    assert not (folder / "0003-net-add-new.c.patch").exists()  # listed, no longer exported: removed
    # A draft the export would overwrite with other bytes stops it; nothing is written.
    (folder / "0003-net-add-new.c.patch").write_text("my own idea\n")
    before = tree_state(demo_series.path)
    r = kpt(series_ws, "export", "demo", "--from", "v1..work")
    assert r.exit_code == 2 and "0003-net-add-new.c.patch: not in series" in r.output, r.output
    assert tree_state(demo_series.path) == before


@pytest.mark.parametrize("errno_", [28, 1])  # ENOSPC, EPERM
def test_an_error_while_writing_leaves_the_old_files(series_ws, demo_series, monkeypatch, errno_):
    ap.apply_series(series_ws, "demo")
    before = tree_state(demo_series.path)
    real = safefs.write_durable
    calls = []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno_, os.strerror(errno_), str(path))
        return real(path, data)

    monkeypatch.setattr(safefs, "write_durable", failing)
    r = kpt(series_ws, "export", "demo", "--from", "v2..b-v2")  # rewrites every patch
    assert r.exit_code == 2, r.output
    assert ("no space left on " if errno_ == 28 else "cannot write ") in r.output
    assert "Traceback" not in r.output
    monkeypatch.setattr(safefs, "write_durable", real)
    assert tree_state(demo_series.path) == before  # no staged file, no journal left either


def release_claims():
    """Drop this test process's worktree locks (taken by in-process applies) before children run."""
    for fh in ap._claimed.values():
        fh.close()
    ap._claimed.clear()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPT_TEST_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.update(extra)
    return env


def run_killed(ws, args, step):
    """`kpt ARGS` in a child SIGKILLed at its step-th step; True if it was killed."""
    r = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(ws.root), *args],
                       capture_output=True, text=True, env=_env(KPT_TEST_CRASH_AT=str(step)))
    assert r.returncode in (0, -9), r.stderr
    return r.returncode == -9


def restore(folder, state):
    for p in sorted(folder.rglob("*"), reverse=True):
        if p.is_file() and str(p.relative_to(folder)) not in state:
            p.unlink()
    for rel, data in state.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def test_export_killed_at_every_step_leaves_the_old_or_the_new_set(series_ws, demo_series):
    ap.apply_series(series_ws, "demo")
    folder = demo_series.path
    (demo_series.trees["linux"].folder / "NOTES").write_text("kept\n")
    old = tree_state(folder)
    release_claims()
    args = ["export", "demo", "--from", "v2..b-v2"]  # one patch for three: writes and removals
    r = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(series_ws.root), *args],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    new = tree_state(folder)
    assert new != old and b"kept\n" == new["linux/NOTES"]
    killed = 0
    for step in range(1, 40):
        restore(folder, old)
        if not run_killed(series_ws, args, step):
            break
        killed += 1
        sm.load_series(series_ws, "demo")  # the next kpt command finishes or undoes the change
        assert tree_state(folder) in (old, new), f"killed at step {step}"
    assert killed >= 5  # journal, staged files, commit record, renames, removals
    restore(folder, old)


@pytest.mark.parametrize("layout", [
    lambda t: t.replace("[trees.linux]", "[ trees.linux ]  # spaces inside the brackets"),
    lambda t: t.replace("[trees.linux]", '[trees."linux"]'),
    lambda t: t.replace("[trees.linux]\n", "trees.linux.to = []\n[unused]\n").replace(
        "[unused]\n", "").replace('subject_prefix = "PATCH"', 'trees.linux.subject_prefix = "PATCH"'),
])
def test_rebase_updates_series_toml_however_it_is_laid_out(series_ws, demo_series, layout):
    import tomllib
    text = demo_series.toml_path.read_text()
    data = tomllib.loads(text)
    # An equivalent file in another valid layout, with a comment of the user's.
    inline = ("# my notes\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in data.items() if k != "trees")
              + '\ntrees = { linux = { base = "v1", subject_prefix = "PATCH", to = [], cc = [] } }\n')
    for new in (layout(text), inline):
        if tomllib.loads(new) != data:
            continue  # the layout did not apply to this file: nothing to check
        demo_series.toml_path.write_text(new)
        r = kpt(series_ws, "rebase", "demo", "--onto", "v2", "--bump")
        assert r.exit_code == 0, r.output
        s = sm.load_series(series_ws, "demo")
        assert s.trees["linux"].base == "v2" and s.version == 2
        assert "# my notes" in s.toml_path.read_text() or "# my notes" not in new
        # back to the start for the next layout
        demo_series.toml_path.write_text(text)
        assert kpt(series_ws, "rebase", "demo", "--onto", "v1").exit_code == 0


def test_rebase_killed_at_every_step_leaves_the_old_or_the_new_series(series_ws, demo_series, series_repo):
    folder = demo_series.path
    old = tree_state(folder)
    args = ["rebase", "demo", "--onto", "merged-later", "--bump"]
    r = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(series_ws.root), *args],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    new = tree_state(folder)
    assert new["series.toml"] != old["series.toml"] and len([k for k in new if k.endswith(".patch")]) == 2
    killed = 0
    for step in range(1, 60):
        restore(folder, old)
        # each round starts from the same place: no worktree, no branch
        subprocess.run(["git", "-C", str(series_repo), "worktree", "remove", "--force", "--force",
                        str(ap.worktree_path(series_ws, "linux", "demo", 1))], capture_output=True)
        subprocess.run(["git", "-C", str(series_repo), "branch", "-q", "-D", "kpt/demo/v1"], capture_output=True)
        for f in ap.worktree_path(series_ws, "linux", "demo", 1).parent.glob("kpt-demo-v1.*.json"):
            f.unlink()
        if not run_killed(series_ws, args, step):
            break
        killed += 1
        sm.load_series(series_ws, "demo")
        state = tree_state(folder)
        assert state in (old, new), f"killed at step {step}: neither the old nor the new series"
        if state == old:  # killed before the switch: a rerun completes it
            r = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(series_ws.root),
                                *args], capture_output=True, text=True, env=_env())
            assert r.returncode == 0, f"step {step}: {r.stderr}"
            assert tree_state(folder) == new
    assert killed >= 8  # apply's steps, then the export's


def test_a_backport_renamed_by_export_keeps_its_declaration(series_ws, series_repo):
    """export names patch files after their subjects: a [[backport]] names the new file after it."""
    upstream = "21a235bce12361e64adfc2ef97e4ae2e51ad63d4"
    r = series_repo
    git(r, "checkout", "-q", "-b", "bp", "v1")
    (series_repo / "README").write_text("readme fixed\n")
    git(r, "commit", "-q", "-a", "-m", f"readme: fix it\n\ncommit {upstream} upstream.\n\nFix.\n")
    git(r, "checkout", "-q", "-b", "bp2", "v1")
    (series_repo / "README").write_text("readme fixed\n")
    git(r, "commit", "-q", "-a", "-m", f"readme: fix it as upstream does\n\ncommit {upstream} upstream.\n\nFix.\n")
    git(r, "checkout", "-q", "main")
    series, _ = export.import_stack(series_ws, "v1..bp", "linux", name="bp")
    old = series.trees["linux"].patches[0].file
    with open(series.toml_path, "a") as fh:
        fh.write(f'\n# carried from upstream\n[[backport]]\npatch = "linux/{old}"\ncommit = "{upstream}"\n')
    res = export.export_series(series_ws, "bp", from_branch="v1..bp2")
    new = res.files[0]
    assert new != old and new.startswith("0001-readme-fix-it-as-upstream")
    s = sm.load_series(series_ws, "bp")
    assert s.backport("linux", new).commit == upstream and s.backport("linux", old) is None
    assert "# carried from upstream" in s.toml_path.read_text()
