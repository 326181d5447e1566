"""`kpt tree update`: a Debian tree moved to a new version, series rebased or kept."""

from __future__ import annotations

import tomllib

from conftest import git
from kpatch_tool import export, series, trees, treeupdate, workspace


def _setup(tmp_ws, local_archive):
    common = "int common(void) { return 0; }\n"
    line = local_archive({("linux-source-0.1", "0.1-1"): {"Makefile": "v1\n", "common.c": common, "gone.c": "x\n"},
                          ("linux-source-0.1", "0.1-2"): {"Makefile": "v2\n", "common.c": common}})
    ws = tmp_ws(f'# my workspace\n[apt]\nsources = ["{line}"]\n\n[trees.linux]\n'
                f'source = "debian:linux-source-0.1"\nversion = "0.1-1"  # pinned\n')
    wt = trees.checkout(ws, "linux")
    for name, path in (("good", "common.c"), ("bad", "gone.c")):
        git(wt, "checkout", "-q", "--detach", "debian/0.1-1")
        (wt / path).write_text((wt / path).read_text() + f"/* {name} */\n")
        git(wt, "commit", "-q", "-am", f"{name}: change {path}")
        tip = git(wt, "rev-parse", "HEAD").strip()
        export.import_stack(ws, f"debian/0.1-1..{tip}", "linux", name=name)
    return ws


def test_dry_run_prints_the_table_and_changes_nothing(tmp_ws, local_archive):
    ws = _setup(tmp_ws, local_archive)
    before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
    res = treeupdate.update(ws, "linux", dry_run=True)
    assert res.new_version == "0.1-2" and not res.pin_moved
    by = {m.series: m for m in res.moves}
    assert by["good"].new == "clean" and by["good"].action == "would rebase"
    assert by["bad"].new.startswith("fails") and by["bad"].action == "would keep debian/0.1-1"
    assert by["bad"].failing and by["bad"].failing[0].startswith("0001-")
    assert {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()} == before


def test_update_rebases_what_applies_keeps_the_rest_and_moves_the_pin(tmp_ws, local_archive):
    ws = _setup(tmp_ws, local_archive)
    res = treeupdate.update(ws, "linux")
    by = {m.series: m for m in res.moves}
    assert by["good"].action == "rebased" and by["bad"].action == "kept on debian/0.1-1"
    text = (ws.root / "kpt.toml").read_text()
    assert 'version = "0.1-2"  # pinned' in text and "# my workspace\n" in text
    ws2 = workspace.load(ws.root)
    assert ws2.trees["linux"].version == "0.1-2"
    assert series.load_series(ws2, "good").trees["linux"].base == "debian/0.1-2"
    assert series.load_series(ws2, "bad").trees["linux"].base == "debian/0.1-1"
    # Both versions stay in the one repository.
    t = trees.get(ws2, "linux")
    assert set(t.imports) == {"0.1-1", "0.1-2"} and t.ref == "debian/0.1-2"
    assert tomllib.loads(text)["trees"]["linux"]["version"] == "0.1-2"
