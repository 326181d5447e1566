"""The series store: loading, validation of every bad input, depends, `kpt series`."""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from kpatch_tool import series as sm
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError


def write_toml(s: sm.Series, extra: str, top: str = "") -> None:
    s.toml_path.write_text(top + s.toml_path.read_text() + extra)


def clone_series(ws, src: sm.Series, name: str, depends: list[str] | None = None) -> sm.Series:
    dst = ws.patches_dir / name
    shutil.copytree(src.path, dst)
    text = (dst / "series.toml").read_text().replace(f'name = "{src.name}"', f'name = "{name}"')
    text = re.sub(r"(?m)^depends = .*$", f"depends = {depends or []!r}".replace("'", '"'), text)
    (dst / "series.toml").write_text(text)
    return sm.load_series(ws, name)


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def test_load_reads_every_field(series_ws, demo_series):
    (demo_series.path / "extra.config").write_text("CONFIG_XEN=y\n")
    write_toml(demo_series, top='fragments = ["extra.config"]\n', extra='''
[changelog]
v2 = "rebased"

[[smoke]]
name = "netfront-up"
where = "domU"
run = "ip link show eth0"
expect = "state UP"
timeout = 30
''')
    (demo_series.path / "cover.md").write_text("Fix netfront\n\nLonger body.\n")
    s = sm.load_series(series_ws, "demo")
    assert s.version == 1 and s.trees["linux"].base == "v1"
    assert [p.subject for p in s.trees["linux"].patches] == [
        "netfront: fix line 5", "blkfront: fix line 10", "net: add new.c"]
    assert s.trees["linux"].patches[2].author == "Bob Example <bob@example.org>"
    assert s.changelog == {2: "rebased"}
    assert s.smoke == [sm.SmokeTest("netfront-up", "domU", "ip link show eth0", "state UP", 30.0)]
    assert s.fragments == [(demo_series.path / "extra.config").resolve()]
    assert (s.cover_title, s.cover_body) == ("Fix netfront", "Longer body.")
    assert [x.name for x in sm.list_series(series_ws)] == ["demo"]


def test_resolve_depends_is_topological_and_lists_each_once(series_ws, demo_series):
    clone_series(series_ws, demo_series, "base-a")
    clone_series(series_ws, demo_series, "mid-b", ["base-a"])
    clone_series(series_ws, demo_series, "mid-c", ["base-a"])
    clone_series(series_ws, demo_series, "top", ["mid-b", "mid-c", "base-a"])
    assert [s.name for s in sm.resolve_depends(series_ws, "top")] == ["base-a", "mid-b", "mid-c", "top"]


def test_dependency_cycle_is_named(series_ws, demo_series):
    clone_series(series_ws, demo_series, "a", ["b"])
    clone_series(series_ws, demo_series, "b", ["a"])
    with pytest.raises(UsageError, match=r"dependency cycle: a -> b -> a"):
        sm.resolve_depends(series_ws, "a")


def test_series_list_reports_a_cycle(series_ws, demo_series):
    clone_series(series_ws, demo_series, "a", depends=["b"])
    (series_ws.patches_dir / "b").mkdir()
    (series_ws.patches_dir / "b" / "series.toml").write_text('name = "b"\ndepends = ["a"]\n')
    r = kpt(series_ws, "series", "list")
    assert r.exit_code == 2 and "dependency cycle: a -> b -> a" in r.output


def test_missing_dependency_names_the_file(series_ws, demo_series):
    clone_series(series_ws, demo_series, "top", ["nope"])
    with pytest.raises(UsageError, match=r"top/series.toml: 'depends' names 'nope'"):
        sm.resolve_depends(series_ws, "top")


def test_order_file_naming_a_missing_patch(series_ws, demo_series):
    order = demo_series.trees["linux"].order_file
    order.write_text(order.read_text() + "0009-gone.patch\n")
    with pytest.raises(UsageError, match=r"linux/series:\d+: 0009-gone.patch: no such patch file"):
        sm.load_series(series_ws, "demo")


def _corrupt(demo_series, idx: int, data: bytes):
    p = demo_series.trees["linux"].patches[idx].path
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case, message", [
    ("binary", r"0002-blkfront-fix-line-10.patch: not a patch \(binary data\)"),
    ("crlf", r"0002-blkfront-fix-line-10.patch:1: CRLF line endings"),
    ("latin1", r"0002-blkfront-fix-line-10.patch:2: header is not UTF-8"),
    ("truncated", r"0002-blkfront-fix-line-10.patch:\d+: patch is truncated"),
    ("dotdot", r"0002-blkfront-fix-line-10.patch:\d+: patch touches '../etc/passwd', outside the tree"),
    ("absolute", r"0002-blkfront-fix-line-10.patch:\d+: patch touches absolute path"),
    ("two", r"0002-blkfront-fix-line-10.patch: holds 2 patches"),
    ("nodiff", r"0002-blkfront-fix-line-10.patch: not a patch \(no diff in it\)"),
    ("noheaders", r"0002-blkfront-fix-line-10.patch: not in git format-patch form"),
    ("crlf-in-from", r"0002-blkfront-fix-line-10.patch: a header cannot be decoded"),
    ("octal", r"0002-blkfront-fix-line-10.patch:\d+: patch touches '../x', outside the tree"),
    ("dotgit", r"0002-blkfront-fix-line-10.patch:\d+: patch touches '.git/config', inside git's own folder"),
    ("no-final-newline", r"0002-blkfront-fix-line-10.patch:\d+: the last line has no newline"),
    ("undercount", r"0002-blkfront-fix-line-10.patch:\d+: hunk line counts do not match its header"),
    ("no-address", r"0002-blkfront-fix-line-10.patch: From: .*Ada Lovelace.* has no e-mail address"),
    ("binary-patch", r"0002-blkfront-fix-line-10.patch:\d+: a binary patch"),
    ("newline-in-subject", r"0002-blkfront-fix-line-10.patch: the Subject: header holds control characters"),
])
def test_bad_patch_files_are_named(series_ws, demo_series, case, message):
    good = demo_series.trees["linux"].patches[1].path.read_bytes()
    data = {
        "binary": b"\x7fELF\x02\x01\x01\x00\x00\x00" * 20,
        "crlf": good.replace(b"\n", b"\r\n"),
        "latin1": good.replace(b"From: Ada Lovelace", b"From: Ad\xe9 Lovelace"),
        "truncated": good[: good.index(b"-blk line 10") + 5],
        "dotdot": good.replace(b"a/drivers/block/blkfront.c", b"a/../etc/passwd"),
        "absolute": good.replace(b"--- a/drivers/block/blkfront.c", b"--- /etc/passwd"),
        "two": good + good,
        "nodiff": good[: good.index(b"\n---\n") + 1],
        "noheaders": good[good.index(b"diff --git"):].replace(b"diff --git", b"Hello\n\ndiff --git", 1),
        "octal": good.replace(b"diff --git a/drivers/block/blkfront.c b/drivers/block/blkfront.c",
                              b'diff --git "a/\\056\\056/x" "b/\\056\\056/x"'),
        "dotgit": good.replace(b"drivers/block/blkfront.c", b".git/config"),
        "no-final-newline": good.rstrip(b"\n"),
        "undercount": re.sub(rb"@@ -(\d+),7 \+(\d+),7 @@", rb"@@ -\1,6 +\2,6 @@", good),
        "no-address": good.replace(b"From: Ada Lovelace <ada@example.org>", b"From: Ada Lovelace"),
        "binary-patch": good[: good.index(b"index ")] + b"index 1111111..2222222 100644\nGIT binary patch\n"
                        b"literal 3\nKcmZ?wbNB!K0|WpE\n\nliteral 0\nHcmV?d00001\n\n",
        "crlf-in-from": good.replace(b"From: Ada Lovelace", b"From: =?UTF-8?Q?Eve=0D=0ABcc=3A_x?="),
        "newline-in-subject": good.replace(b"Subject: [PATCH] ", b"Subject: =?UTF-8?Q?a=0Ab?= "),
    }[case]
    _corrupt(demo_series, 1, data)
    with pytest.raises(UsageError, match=message):
        sm.load_series(series_ws, "demo")


def test_unknown_tree_and_keys_are_named(series_ws, demo_series):
    text = demo_series.toml_path.read_text()
    demo_series.toml_path.write_text(text.replace("[trees.linux]", "[trees.linxu]"))
    with pytest.raises(UsageError, match=r"series.toml: \[trees.linxu\]: unknown tree 'linxu'"):
        sm.load_series(series_ws, "demo")
    demo_series.toml_path.write_text("sumary = \"typo\"\n" + text)
    with pytest.raises(UsageError, match=r"unknown key 'sumary'"):
        sm.load_series(series_ws, "demo")
    demo_series.toml_path.write_text(text + '\n[[smoke]]\nname = "x"\nrun = "true"\nwhere = "host"\n')
    with pytest.raises(UsageError, match=r"'smoke\[0\].where' is 'host'"):
        sm.load_series(series_ws, "demo")
    demo_series.toml_path.write_text("version = 2\n" + text)
    with pytest.raises(UsageError, match=r"series.toml: not valid TOML: .*line"):
        sm.load_series(series_ws, "demo")


def test_new_series_creates_the_layout(series_ws):
    s = sm.new_series(series_ws, "fresh", ["linux"], summary="A fresh series")
    assert (s.path / "series.toml").is_file() and (s.path / "cover.md").is_file()
    assert s.trees["linux"].patches == [] and s.trees["linux"].order_file.is_file()
    assert s.cover_title == "A fresh series"
    with pytest.raises(UsageError, match="already exists"):
        sm.new_series(series_ws, "fresh", ["linux"])
    with pytest.raises(UsageError, match="unknown tree 'nope'"):
        sm.new_series(series_ws, "other", ["nope"])
    assert not (series_ws.patches_dir / "other").exists()


@pytest.mark.parametrize("smoke, message", [
    ("name = 'a b'\nrun = 'true'", "a KTAP test name is letters"),
    ("name = 'x'\nrun = 'true'\ntimeout = nan", "must be a positive number"),
    ("name = 'x'\nrun = 'true'\ntimeout = 1e300", "must be a positive number"),
    ("name = 'x'\nskip = 5", "must be a string"),
    ("name = 'x'", "'smoke[0].run' is required"),
    ("name = 'x'\nrun = 'true'\non_base = 'fails'", "'smoke[0].on_base' must be a table"),
    ("name = 'x'\nrun = 'true'\non_base = { colour = 'red' }", "unknown"),
    ("name = 'x'\nrun = 'true'\non_base = { expect = '(' }", "'smoke[0].on_base.expect' is not a valid regex"),
    ("name = 'x'\nrun = 'true'\non_base = { skip = '' }", "'smoke[0].on_base.skip' must be a string"),
    ("name = 'x'\nrun = 'true'\non_base = { skip = 'a', expect = 'b' }", "gives expect and skip"),
])
def test_smoke_tables_are_checked(series_ws, demo_series, smoke, message):
    write_toml(demo_series, f"\n[[smoke]]\n{smoke}\n")
    with pytest.raises(UsageError, match=re.escape(message)):
        sm.load_series(series_ws, "demo")


def test_smoke_skip_is_accepted_without_run(series_ws, demo_series):
    write_toml(demo_series, "\n[[smoke]]\nname = 'qemu-maps'\nwhere = 'domU'\nskip = 'not on this variant'\n")
    (t,) = sm.load_series(series_ws, "demo").smoke
    assert (t.name, t.skip, t.run) == ("qemu-maps", "not on this variant", "true")


def test_a_check_has_its_own_form_on_the_base(series_ws, demo_series):
    """What the series fixes, seen without it: another expect, or a skip for what only the series adds."""
    write_toml(demo_series, "\n[[smoke]]\nname = 'rate'\nrun = 'true'\nexpect = 'within'\n"
                            "on_base = { expect = 'over' }\n"
                            "[[smoke]]\nname = 'counter'\nrun = 'true'\non_base = { skip = 'patch 2 adds it' }\n"
                            "[[smoke]]\nname = 'plain'\nrun = 'true'\nexpect = 'x'\n"
                            "[[smoke]]\nname = 'dm'\nrun = 'true'\nneeds = ['device-model']\n")
    tests = {t.name: t for t in sm.load_series(series_ws, "demo").smoke}
    assert tests["rate"].as_check("demo")["expect"] == "within"
    assert tests["rate"].as_check("demo", on_base=True)["expect"] == "over"
    assert tests["counter"].as_check("demo")["skip"] == ""
    assert tests["counter"].as_check("demo", on_base=True)["skip"] == "on the base: patch 2 adds it"
    assert tests["plain"].as_check("demo", on_base=True) == tests["plain"].as_check("demo")
    assert "no device model" in tests["dm"].as_check("demo", on_base=True)["skip"]


@pytest.mark.parametrize("name", ["x.lock", "a..b", "trailing.", ".hidden", "a/b"])
def test_series_name_must_make_a_branch_name(series_ws, name):
    r = kpt(series_ws, "series", "new", name, "--tree", "linux")
    assert r.exit_code == 2 and "not a valid series name" in r.output
    assert sorted(p.name for p in series_ws.patches_dir.iterdir()) == []


@pytest.mark.parametrize("frag, message", [
    ("/etc/passwd", "outside the series folder"),
    ("../../kpt.toml", "outside the series folder"),
    ("missing.config", "no such file"),
])
def test_fragments_stay_inside_the_series_folder(series_ws, demo_series, frag, message):
    from kpatch_tool import kconfig

    write_toml(demo_series, "", top=f'fragments = ["{frag}"]\n')
    with pytest.raises(UsageError, match=f"'fragments' names '{re.escape(frag)}', {message}"):
        sm.load_series(series_ws, "demo")
    if "outside" in message:
        with pytest.raises(UsageError, match=message):
            kconfig.series_fragments(series_ws, "demo")


def test_update_toml_keeps_comments(series_ws, demo_series):
    demo_series.toml_path.write_text("# keep me\n" + demo_series.toml_path.read_text())
    sm.update_toml(demo_series, version=3, bases={"linux": "v2"}, changelog={3: "rebased onto v2"})
    s = sm.load_series(series_ws, "demo")
    assert (s.version, s.trees["linux"].base, s.changelog) == (3, "v2", {3: "rebased onto v2"})
    assert s.toml_path.read_text().startswith("# keep me\n")


def test_cli_series_list_show_new(series_ws, demo_series):
    r = kpt(series_ws, "series", "list")
    assert r.exit_code == 0, r.output
    assert "demo" in r.output and "linux (3)" in r.output
    r = kpt(series_ws, "series", "show", "demo")
    assert r.exit_code == 0, r.output
    assert "blkfront: fix line 10" in r.output and "drivers/block/blkfront.c +1 -1" in r.output
    r = kpt(series_ws, "series", "new", "other", "--tree", "linux")
    assert r.exit_code == 0 and (series_ws.patches_dir / "other" / "linux" / "series").is_file()
    r = kpt(series_ws, "series", "show", "missing")
    assert r.exit_code == 2


def test_diffstat_counts_files_of_a_patch_stored_inside_a_git_repository(demo_series):
    """The store lives in the project's own repo; git apply there must still count every file."""
    import subprocess

    from kpatch_tool.series import diffstat

    patch = demo_series.trees["linux"].patches[0]
    subprocess.run(["git", "init", "-q", str(demo_series.path.parent.parent)], check=True)
    rows = diffstat(patch)
    assert rows and all(int(a) + int(d) > 0 for a, d, _ in rows)


UPSTREAM = "21a235bce12361e64adfc2ef97e4ae2e51ad63d4"


def test_a_backport_declaration_is_read_onto_its_patch(series_ws, demo_series):
    f = demo_series.trees["linux"].patches[1].file
    write_toml(demo_series, f'''
# a patch carried from upstream
[[backport]]
patch = "linux/{f}"
commit = "{UPSTREAM}"
subject = "blkfront: fix line 10"
author = "Alice Example <alice@example.org>"
''')
    s = sm.load_series(series_ws, "demo")
    text = s.toml_path.read_text().splitlines()
    bp = s.backport("linux", f)
    assert bp == sm.Backport("linux", f, UPSTREAM, "blkfront: fix line 10", "Alice Example <alice@example.org>",
                             text.index("[[backport]]") + 1)
    assert s.backport("linux", demo_series.trees["linux"].patches[0].file) is None


@pytest.mark.parametrize("body, key, what", [
    ('patch = "linux/{f}"\ncommit = "21a235bce123"', "commit", "full 40-digit"),
    ('patch = "linux/nope.patch"\ncommit = "{c}"', "patch", "not a patch of the series"),
    ('patch = "qemu/{f}"\ncommit = "{c}"', "patch", "not a patch of the series"),
    ('commit = "{c}"', None, "needs 'patch'"),
    ('patch = "linux/{f}"\ncommit = "{c}"\nfixes = "x"', "fixes", "not a known key"),
    ('patch = "linux/{f}"\ncommit = "{c}"\nauthor = "Petr Pavlu"', "author", "Name <mail@host>"),
    ('patch = "linux/{f}"\ncommit = 7', "commit", "must be a string"),
])
def test_a_bad_backport_declaration_exits_2_naming_file_and_line(series_ws, demo_series, body, key, what):
    f = demo_series.trees["linux"].patches[0].file
    write_toml(demo_series, "\n[[backport]]\n" + body.format(f=f, c=UPSTREAM) + "\n")
    lines = demo_series.toml_path.read_text().splitlines()
    want = next(i for i, l in enumerate(lines, 1) if l.startswith(key + " =")) if key else \
        lines.index("[[backport]]") + 1
    with pytest.raises(UsageError) as exc:
        sm.load_series(series_ws, "demo")
    assert exc.value.exit_code == 2
    assert exc.value.message.startswith(f"{demo_series.toml_path}:{want}: [[backport]]"), exc.value.message
    assert what in exc.value.message


def test_the_same_patch_declared_twice_names_the_second(series_ws, demo_series):
    f = demo_series.trees["linux"].patches[0].file
    one = f'\n[[backport]]\npatch = "linux/{f}"\ncommit = "{UPSTREAM}"\n'
    write_toml(demo_series, one + one)
    lines = demo_series.toml_path.read_text().splitlines()
    second = [i for i, l in enumerate(lines, 1) if l.startswith("patch =")][1]
    with pytest.raises(UsageError, match=rf":{second}: \[\[backport\]\] 'patch' declares"):
        sm.load_series(series_ws, "demo")
