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
