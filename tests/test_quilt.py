"""Quilt series as distributions ship them: import, export --quilt, round trip."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from kpatch_tool import apply as ap
from kpatch_tool import export, quilt
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError

from conftest import git


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def _plain(diff: str, old_root: str, new_root: str) -> str:
    """A git diff as `diff -u` writes it: other roots, timestamps, no git headers."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("diff --git", "index ")):
            continue
        if line.startswith("--- a/"):
            line = f"--- {old_root}{line[5:]}\t2024-01-02 03:04:05.000000000 +0100"
        elif line.startswith("+++ b/"):
            line = f"+++ {new_root}{line[5:]}\t2024-01-02 03:05:06.000000000 +0100"
        out.append(line)
    return "\n".join(out) + "\n"


DEP3 = """\
Description: netfront: fix line 5
 The fifth line was wrong since the
 driver was first merged.
 .
   (indented: kept as written)
Author: Ben Hutchings <ben@example.org>
Origin: upstream, https://git.kernel.org/linus/0123456789ab
Bug-Debian: https://bugs.debian.org/123456
Forwarded: not-needed
Last-Update: 2024-01-02

Free-form text after the header is more description.

Index: linux/drivers/net/netfront.c
===================================================================
"""

KERNEL_STYLE = """\
xen-netback: fix the rate limit

The credit was computed per queue.
netback: a line that looks like a header, kept.

Signed-off-by: Pat Doe <pat@example.org>
---
"""


@pytest.fixture
def debian_quilt(series_repo, tmp_path):
    """A quilt folder shaped like debian/patches: subfolders, no .patch suffix,
    -p0, comments, DEP-3, plain diff -u with timestamps, diff -N for a new file."""
    q = tmp_path / "debian-patches"
    (q / "features/x86").mkdir(parents=True)
    (q / "bugfix").mkdir()
    d1 = git(series_repo, "diff", "v1", "work~2")
    d2 = git(series_repo, "diff", "work~2", "work~1")
    (q / "features/x86/fix-net.diff").write_text(DEP3 + _plain(d1, "linux.orig", "linux"))
    p0 = _plain(d2, "", "").replace("--- /", "--- ").replace("+++ /", "+++ ")
    (q / "bugfix/xen-netback-rate").write_text(KERNEL_STYLE + p0)
    (q / "new-file.patch").write_text(
        "From: Bob Example <bob@example.org>\nSubject: [PATCH 3/3] net: add new.c\nForwarded: yes\n\n"
        "--- linux.orig/drivers/net/new.c\t1970-01-01 00:00:00.000000000 +0000\n"
        "+++ linux/drivers/net/new.c\t2024-01-02 03:04:05.000000000 +0000\n"
        "@@ -0,0 +1 @@\n+int new_driver;\n")
    (q / "series").write_text("# Debian's order\nfeatures/x86/fix-net.diff   # the net fix\n\n"
                              "bugfix/xen-netback-rate -p0\nnew-file.patch -p1\n")
    return q


def test_import_a_distribution_quilt_folder(series_ws, series_repo, debian_quilt):
    s, res = export.import_stack(series_ws, str(debian_quilt), "linux", name="deb",
                                 author="Pat Doe <pat@example.org>")
    net, rate, new = s.trees["linux"].patches
    assert (net.subject, net.author) == ("netfront: fix line 5", "Ben Hutchings <ben@example.org>")
    # The kernel-style first line is the subject, not a mail header to drop.
    assert (rate.subject, rate.author) == ("xen-netback: fix the rate limit", "Pat Doe <pat@example.org>")
    assert (new.subject, new.author) == ("net: add new.c", "Bob Example <bob@example.org>")
    text = net.path.read_text()
    for line in ["The fifth line was wrong since the\ndriver was first merged.\n\n  (indented: kept as written)\n",
                 "Free-form text after the header is more description.\n",
                 "Origin: upstream, https://git.kernel.org/linus/0123456789ab\nBug-Debian: https://bugs.debian.org/123456\n"
                 "Forwarded: not-needed\nLast-Update: 2024-01-02\n"]:
        assert line in text
    assert "Index:" not in text and "=====" not in text and "2024-01-02 03:04:05" not in text
    rtext = rate.path.read_text()
    assert "The credit was computed per queue.\nnetback: a line that looks like a header, kept.\n\n" \
           "Signed-off-by: Pat Doe <pat@example.org>\n---\n" in rtext
    assert "Forwarded: yes" in new.path.read_text() and "new file mode 100644" in new.path.read_text()
    wt = ap.apply_series(series_ws, "deb").worktree
    assert git(wt, "diff", "v1", "HEAD", "--stat") == git(series_repo, "diff", "v1", "work", "--stat")
    # An import is reproducible: no clock in it.
    assert "Date: Sun, 9 Sep 2001 01:46:40 +0000" in rtext


def test_export_quilt_then_import_again_is_identical(series_ws, series_repo, debian_quilt, tmp_path):
    s, _ = export.import_stack(series_ws, str(debian_quilt), "linux", name="deb",
                               author="Pat Doe <pat@example.org>")
    out = tmp_path / "exported"
    r = kpt(series_ws, "export", "deb", "--quilt", str(out))
    assert r.exit_code == 0, r.output
    first = (out / "0001-netfront-fix-line-5.patch").read_text()
    assert first.startswith("Description: netfront: fix line 5\nAuthor: Ben Hutchings <ben@example.org>\n"
                            "Origin: upstream, https://git.kernel.org/linus/0123456789ab\n")
    assert "Last-Update: 2024-01-02\n\nThe fifth line" in first and "\n---\ndiff --git a/" in first
    assert "Date:" not in (out / "0002-xen-netback-fix-the-rate-limit.patch").read_text()
    assert (out / "series").read_text().splitlines()[1:] == [p.file for p in s.trees["linux"].patches]
    again, _ = export.import_stack(series_ws, str(out), "linux", name="deb2")
    assert [p.data() for p in again.trees["linux"].patches] == [p.data() for p in s.trees["linux"].patches]
    # And the demo series (format-patch mails with trailers) survives the trip too.
    r = kpt(series_ws, "export", "deb2", "--quilt", str(tmp_path / "twice"))
    assert r.exit_code == 0 and (tmp_path / "twice" / "series").is_file()


def test_round_trip_of_mails_with_trailers(series_ws, series_repo, demo_series, tmp_path):
    out = tmp_path / "q"
    quilt.export_quilt([p.path for p in demo_series.trees["linux"].patches], out)
    s, _ = export.import_stack(series_ws, str(out), "linux", name="demo2")
    assert [p.data() for p in s.trees["linux"].patches] == [p.data() for p in demo_series.trees["linux"].patches]


def test_parse_keeps_every_description_line():
    q = quilt.parse_patch_text("x", b"subsys: first\nsecond: line\n\nthird\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    assert q.subject == "subsys: first" and q.body == "second: line\n\nthird" and q.author == ""
    q = quilt.parse_patch_text("x", b"Subject: =?UTF-8?q?Jos=C3=A9=3A_fix?=\nFrom: =?iso-8859-1?q?Jos=E9?= <j@x>\n\n"
                               b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    assert (q.subject, q.author, q.email) == ("Jos\u00e9: fix", "Jos\u00e9", "j@x")


@pytest.mark.parametrize("line, message", [
    ("sub", "sub: a folder"),
    ("../outside.patch", "outside the quilt folder"),
    ("a.patch -R", "reversed patches"),
    ("a.patch -F3", "unknown option '-F3'"),
    ("fifo", "fifo: not a regular file"),
    ("missing.patch", "missing.patch: no such patch file"),
])
def test_bad_order_file_lines_name_the_line_and_write_nothing(series_ws, series_repo, tmp_path, line, message):
    q = tmp_path / "q"
    (q / "sub").mkdir(parents=True)
    (q / "a.patch").write_text("x: y\n" + git(series_repo, "diff", "v1", "work~2"))
    os.mkfifo(q / "fifo")
    (q / "series").write_text(f"a.patch\n{line}\n")
    r = kpt(series_ws, "series", "import", str(q), "--tree", "linux", "--name", "bad", "--author", "A <a@b>")
    assert r.exit_code == 2, r.output
    assert f"{q / 'series'}:2" in r.output and message in r.output
    assert not (series_ws.patches_dir / "bad").exists()


def test_order_file_that_is_a_folder_or_names_nothing(tmp_path):
    (tmp_path / "series").mkdir()
    with pytest.raises(UsageError, match="not a file"):
        quilt.read_order(tmp_path)
    (tmp_path / "series").rmdir()
    (tmp_path / "series").write_text("# nothing\n")
    with pytest.raises(UsageError, match="names no patches"):
        quilt.read_order(tmp_path)


def test_export_quilt_refuses_a_folder_of_other_files(series_ws, demo_series, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    r = kpt(series_ws, "export", "demo", "--quilt", str(tmp_path / "busy"))
    assert r.exit_code == 2 and "no quilt order file" in r.output
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_binary_files_differ_note_is_dropped_with_its_git_header():
    """diff's note on a binary file it left out changes nothing (GNU patch skips it)."""
    text = (b"--- a/README\n+++ b/README\n@@ -1 +1 @@\n-a\n+b\n"
            b"diff --git a/x.bin b/x.bin\nindex 1111111..2222222 100644\n"
            b"Binary files a/x.bin and b/x.bin differ\n"
            b"diff --git a/y b/y\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n")
    out = quilt.normalise_diff("p", text, 1, 1)
    assert b"x.bin" not in out and b"Binary" not in out
    assert out.count(b"@@ -1 +1 @@") == 2 and b"diff --git a/y b/y" in out


def test_rename_lines_of_a_spliced_submodule_diff_take_the_sections_names():
    """QEMU's stable diffs name a renamed file relative to the submodule it came from."""
    text = (b"diff --git a/sub/dir/old.yml b/sub/dir/new.yml\nsimilarity index 82%\n"
            b"rename from dir/old.yml\nrename to dir/new.yml\nindex 1..2 100644\n"
            b"--- a/sub/dir/old.yml\n+++ b/sub/dir/new.yml\n@@ -1 +1 @@\n-a\n+b\n"
            b"diff --git a/p b/q\nsimilarity index 100%\nrename from x/p\nrename to x/q\n")
    out = quilt.normalise_diff("p", text, 1, 1).split(b"\n")
    assert b"rename from sub/dir/old.yml" in out and b"rename to sub/dir/new.yml" in out
    assert b"rename from p" in out and b"rename to q" in out


@pytest.mark.parametrize("value,expected", [
    ("Lee, Chun-Yi <joeyli.kernel@gmail.com>", ("Lee, Chun-Yi", "joeyli.kernel@gmail.com")),
    ('"Lee, Chun-Yi" <joeyli.kernel@gmail.com>', ("Lee, Chun-Yi", "joeyli.kernel@gmail.com")),
    ('"A \\"B\\" C" <a@example.org>', ('A "B" C', "a@example.org")),
    ("Ada <ada@example.org>, Bob <bob@example.org>", ("Ada", "ada@example.org")),
    ("Debian Kernel Team", ("Debian Kernel Team", "")),
])
def test_author_with_a_comma_is_one_person(value, expected):
    """Debian's linux series has `From: "Lee, Chun-Yi" <...>`; DEP-3 writes it unquoted."""
    assert quilt._person(value) == expected


def test_export_quilt_quotes_an_author_with_a_comma_and_import_reads_it_back(tmp_path):
    data = (b"From: \"Lee, Chun-Yi\" <joeyli.kernel@gmail.com>\nSubject: [PATCH] MODSIGN: x\n\nbody\n---\n"
            b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    (tmp_path / "0001-x.patch").write_bytes(data)
    quilt.export_quilt([tmp_path / "0001-x.patch"], tmp_path / "q")
    text = (tmp_path / "q/0001-x.patch").read_text()
    assert 'Author: "Lee, Chun-Yi" <joeyli.kernel@gmail.com>' in text
    q = quilt.parse_patch_text("x", text.encode())
    assert (q.author, q.email) == ("Lee, Chun-Yi", "joeyli.kernel@gmail.com")
