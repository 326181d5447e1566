"""kpt check-apply: verdicts per patch and base, without checking anything out."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kpatch_tool import checkapply
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError

from conftest import git


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def verdicts(report):
    return [r.status for r in report.results]


def test_verdicts_on_each_base(series_ws, series_repo, demo_series):
    before = (git(series_repo, "status", "--porcelain"), (series_repo / ".git" / "index").read_bytes())
    reports = checkapply.check_apply(series_ws, "demo", ["v1", "v2", "merged", "merged-later", "conflict"])
    by = {r.base: r for r in reports}
    assert verdicts(by["v1"]) == ["clean", "clean", "clean"]
    assert verdicts(by["v2"]) == ["offset", "clean", "clean"] and by["v2"].results[0].detail == "offset 3"
    assert verdicts(by["merged"]) == ["clean", "merged", "clean"]
    # Upstream changed the lines again after taking the patch: found by patch-id.
    assert verdicts(by["merged-later"]) == ["clean", "merged", "clean"]
    merged_as = git(series_repo, "rev-parse", "merged").strip()
    assert by["merged-later"].results[1].detail == f"already in the base as {merged_as[:12]}"
    assert verdicts(by["conflict"]) == ["fails", "clean", "clean"]
    assert by["conflict"].results[0].hunks == ["drivers/net/netfront.c:2"]
    assert [r.ok for r in reports] == [True, True, True, True, False]
    # Nothing was checked out, the user's index and tree are untouched.
    assert not (series_ws.cache_dir / "worktrees").exists()
    assert (git(series_repo, "status", "--porcelain"), (series_repo / ".git" / "index").read_bytes()) == before


def test_three_way_when_blobs_are_known(series_ws, series_repo, demo_series):
    # A base where the context around patch 1 changed (line 2), the line itself did not.
    git(series_repo, "checkout", "-q", "-b", "ctx", "v1")
    f = series_repo / "drivers/net/netfront.c"
    f.write_text(f.read_text().replace("net line 2\n", "net line 2 changed\n"))
    git(series_repo, "commit", "-qam", "context change")
    git(series_repo, "checkout", "-q", "main")
    [rep] = checkapply.check_apply(series_ws, "demo", ["ctx"])
    assert verdicts(rep) == ["3way", "clean", "clean"]


def test_other_tree_and_json_via_cli(series_ws, series_repo, demo_series, tmp_path):
    other = tmp_path / "other-src"
    git(tmp_path, "clone", "-q", "--no-local", str(series_repo), str(other))
    (series_ws.root / "kpt.toml").write_text((series_ws.root / "kpt.toml").read_text()
                                             + f'\n[trees.other]\nsource = "{other}"\n')
    r = kpt(series_ws, "check-apply", "demo", "--onto", "v2,other=origin/b-conflict", "--json")
    assert r.exit_code == 3, r.output
    data = json.loads(r.output[: r.output.rindex("]") + 1])
    assert [(d["base"], d["tree"], d["ok"]) for d in data] == [("v2", "linux", True),
                                                               ("other=origin/b-conflict", "other", False)]
    assert data[1]["results"][0]["status"] == "fails"
    r = kpt(series_ws, "check-apply", "demo", "--onto", "v1,v2")
    assert r.exit_code == 0, r.output
    assert "offset 3" in r.output


@pytest.mark.parametrize("onto, message", [
    ("nope", "no ref 'nope'"),
    ("qemu2=v1", "unknown tree 'qemu2'"),
    (",", "no bases given"),
])
def test_bad_bases(series_ws, demo_series, onto, message):
    r = kpt(series_ws, "check-apply", "demo", "--onto", onto)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_parse_bases(series_ws):
    assert checkapply.parse_bases(series_ws, "linux", ["a", "linux=b"]) == [("a", "linux", "a"), ("linux=b", "linux", "b")]
    with pytest.raises(UsageError):
        checkapply.parse_bases(series_ws, "linux", ["linux="])


def test_a_bare_tree_name_means_that_tree_at_its_base(tmp_ws, make_repo):
    from kpatch_tool.checkapply import parse_bases

    repo = make_repo("lin", {"a": "1\n"})
    ws = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n[trees."linux-6.12"]\nsource = "{repo}"\nkind = "linux"\n')
    assert parse_bases(ws, "linux", ["linux-6.12", "v1.0", "linux=abc"]) == [
        ("linux-6.12", "linux-6.12", "HEAD"), ("v1.0", "linux", "v1.0"), ("linux=abc", "linux", "abc")]


def test_summary_cell_names_the_worst_outcome_and_merged_counts():
    from kpatch_tool.checkapply import BaseReport, PatchCheck, summarise

    def rep(*statuses):
        return BaseReport("b", "linux", "c" * 40, [PatchCheck("s", f"{i}.patch", "x", st) for i, st in enumerate(statuses)])

    assert summarise(rep("clean", "offset")) == "offset"
    assert summarise(rep("merged", "merged")) == "merged"
    assert summarise(rep("merged", "clean", "3way")) == "3way, merged 1 of 3"
    assert summarise(rep("fails", "fuzz", "fails")) == "fails 2"


def test_all_series_table_covers_every_series_with_patches_for_the_tree(demo_series, series_ws):
    from kpatch_tool.checkapply import applicability

    rows = applicability(series_ws, ["v1", "merged"])
    assert [r["series"] for r in rows] == ["demo"]
    assert rows[0]["bases"]["v1"] == "clean"
    assert "merged 1 of 3" in rows[0]["bases"]["merged"]


def test_without_onto_a_series_is_checked_on_its_own_base(series_ws, series_repo, demo_series):
    from kpatch_tool import series

    base = series.load_series(series_ws, "demo").trees["linux"].base
    r = kpt(series_ws, "check-apply", "demo", "--json")
    assert r.exit_code in (0, 3), r.output
    data = json.loads(r.output[: r.output.rindex("]") + 1])
    assert len(data) == 1 and data[0]["tree"] == "linux"
    assert data[0]["base"] == (f"linux={base}" if base else "linux")


def test_all_without_onto_checks_every_series_on_every_tree_of_its_kind(series_ws, series_repo, demo_series,
                                                                          tmp_path):
    """A second Linux tree (a newer upstream, say) gets a column of its own, at its own base."""
    newer = tmp_path / "newer-src"
    git(tmp_path, "clone", "-q", "--no-local", "-b", "conflict", str(series_repo), str(newer))
    (series_ws.root / "kpt.toml").write_text((series_ws.root / "kpt.toml").read_text()
                                             + f'\n[trees.linux-next]\nsource = "{newer}"\nkind = "linux"\n')
    from kpatch_tool import workspace

    ws = workspace.load(series_ws.root)
    [row] = checkapply.applicability_all(ws)
    assert (row["series"], row["tree"], row["kind"]) == ("demo", "linux", "linux")
    assert row["bases"]["linux"] == "clean" and row["bases"]["linux-next"] == "fails 1"
    r = kpt(ws, "check-apply", "--all")
    assert r.exit_code == 0, r.output
    assert "applicability on every linux tree" in r.output and "linux-next" in r.output


def test_upstream_probes_say_present_or_absent_on_every_tree_of_their_kind(series_ws, series_repo, demo_series):
    from kpatch_tool import series

    toml = demo_series.toml_path
    toml.write_text(toml.read_text() + '''
[[upstream]]
name = "there"
tree = "linux"
file = "drivers/net/netfront.c"
contains = "net line 2"

[[upstream]]
name = "not there"
tree = "linux"
file = "drivers/net/netfront.c"
contains = "a line nobody wrote"

[[upstream]]
name = "moved"
tree = "linux"
file = "drivers/net/gone.c"
contains = "x"
''')
    s = series.load_series(series_ws, "demo")
    got = {p["name"]: p["bases"]["linux"] for p in checkapply.upstream_probes(series_ws, s, ["linux"])}
    assert got == {"there": "present", "not there": "absent", "moved": "absent (no file)"}
    toml.write_text(toml.read_text() + '\n[[upstream]]\nname = "half"\ntree = "linux"\nfile = "x.c"\n')
    with pytest.raises(UsageError, match="needs both 'file' and 'contains'"):
        series.load_series(series_ws, "demo")


def test_a_probe_present_on_a_base_marks_its_patches_merged_there(series_ws, series_repo, demo_series):
    """A backport that upstream took in its own form: neither reverse apply nor patch-id finds it."""
    from kpatch_tool import series

    first = demo_series.trees["linux"].patches[0].file
    toml = demo_series.toml_path
    toml.write_text(toml.read_text() + f'''
[[upstream]]
name = "upstream's own fix"
tree = "linux"
file = "drivers/net/netfront.c"
contains = "net line 5 upstream"
patches = ["{first}"]
''')
    by = {r.base: r for r in checkapply.check_apply(series_ws, "demo", ["v1", "conflict"])}
    assert verdicts(by["v1"]) == ["clean", "clean", "clean"]
    # Without the probe this base says "fails" (test_verdicts_on_each_base).
    assert verdicts(by["conflict"]) == ["merged", "clean", "clean"]
    assert by["conflict"].results[0].detail == "upstream: upstream's own fix"
    toml.write_text(toml.read_text().replace(f'patches = ["{first}"]', 'patches = ["0009-nope.patch"]'))
    with pytest.raises(UsageError, match="'0009-nope.patch' is not a patch of trees.linux"):
        series.load_series(series_ws, "demo")
