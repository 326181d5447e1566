"""Matrix files: cells, bad input, and the CI configurations emitted for a fleet."""

from __future__ import annotations

import shlex

import pytest
import yaml
from click.testing import CliRunner

from kpatch_tool import matrix
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError


@pytest.fixture
def ws(tmp_ws, make_repo):
    repo = make_repo("linux", {"Makefile": "all:\n"})
    w = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n[trees."linux-6.12"]\nsource = "{repo}"\nkind = "linux"\n')
    return w


def _write(tmp_path, text):
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def test_cross_product_and_extra_cells(ws, tmp_path):
    (tmp_path / "extra.config").write_text("CONFIG_XEN_VIRTIO=y\n")
    cells = matrix.load(ws, _write(tmp_path, """
[matrix]
series = ["base"]
bases = ["linux", "linux-6.12=import"]
modes = ["guest", "xen"]
[[cell]]
base = "linux"
mode = "xen"
profile = "xen-dom0"
fragments = ["extra.config"]
qemu_args = ["-device", "virtio-net-pci"]
expect = 6
"""))
    assert len(cells) == 5
    assert {(c.tree, c.ref, c.mode) for c in cells[:4]} == {
        ("linux", None, "guest"), ("linux", None, "xen"), ("linux-6.12", "import", "guest"), ("linux-6.12", "import", "xen")}
    extra = cells[4]
    assert extra.expect == 6 and extra.qemu_args == ["-device", "virtio-net-pci"]
    assert extra.fragments[0].name == "extra.config"


@pytest.mark.parametrize("text, message", [
    ('[matrix]\nseries = ["nope"]\nbases = ["linux"]\n', "unknown series 'nope'"),
    ('[matrix]\nseries = ["base"]\nbases = ["linux-9"]\n', "unknown tree 'linux-9'"),
    ('[matrix]\nseries = ["base"]\nbases = ["linux"]\nmodes = ["kvm"]\n', "unknown mode 'kvm'"),
    ('[[cell]]\nbase = "linux"\ncolour = "red"\n', "unknown key"),
    ('[matrix]\n', "no cells"),
    ('[matrix\n', "not valid TOML"),
])
def test_bad_matrix_files_are_named_with_the_problem(ws, tmp_path, text, message):
    with pytest.raises(UsageError, match=message) as exc:
        matrix.load(ws, _write(tmp_path, text))
    assert "m.toml" in exc.value.message


def _cells(ws, tmp_path):
    return matrix.load(ws, _write(tmp_path, """
[matrix]
series = ["base"]
bases = ["linux", "linux-6.12"]
modes = ["guest", "xen+domU"]
[[cell]]
base = "linux"
mode = "xen"
qemu_args = ["-device", "virtio-net-pci,netdev=n0", "-netdev", "user,id=n0"]
expect = 6
"""))


def _assert_runnable(cmd: str):
    """The command must be a `kpt ci` invocation click accepts."""
    argv = shlex.split(cmd)
    assert argv[0] == ".venv/bin/kpt" and argv[1] == "ci"
    ctx = main.commands["ci"].make_context("ci", argv[2:])
    assert ctx.params["mode"] in ("guest", "xen", "xen+domU")
    # What the fleet runs is what `kpt ci --matrix` runs: a base cell runs no series.
    assert ctx.params["series"] or ctx.params["base_only"]


def test_emitted_gitlab_pipeline_has_one_job_per_cell_with_commands_that_exist(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    doc = yaml.safe_load(matrix.emit_gitlab(cells))
    jobs = {k: v for k, v in doc.items() if k != "stages"}
    assert len(jobs) == len(cells) == 5
    for job in jobs.values():
        assert job["script"][0] == "./scripts/setup.sh"
        _assert_runnable(job["script"][1])
        assert "out/" in job["artifacts"]["paths"]


def test_emitted_github_workflow_has_one_matrix_entry_per_cell(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    doc = yaml.safe_load(matrix.emit_github(cells))
    include = doc["jobs"]["kpt"]["strategy"]["matrix"]["include"]
    assert len(include) == len(cells)
    assert len({e["name"] for e in include}) == len(cells)
    for e in include:
        _assert_runnable(e["cmd"])


def test_cli_emit_writes_the_file(ws, tmp_path):
    m = _write(tmp_path, '[matrix]\nseries = ["base"]\nbases = ["linux"]\nmodes = ["guest"]\n')
    out = tmp_path / "child.yml"
    res = CliRunner().invoke(main, ["-w", str(ws.root), "ci", "--matrix", str(m), "--emit", "gitlab", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "kpt-base-linux-guest" in yaml.safe_load(out.read_text())


def test_summary_marks_expected_failures(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    outs = [matrix.CellOutcome(cells[0], 0, None, None), matrix.CellOutcome(cells[1], 4, "config", None),
            matrix.CellOutcome(cells[4], 6, "boot", None)]
    cols, rows = matrix.summary_rows(outs)
    row = dict(rows)["base"]
    assert row[cells[0].column] == "pass"
    assert row[cells[1].column] == "config (exit 4) - unexpected"
    assert row[cells[4].column] == "boot (exit 6) - as expected"


def test_a_base_cell_can_run_a_series_checks_and_says_so_on_its_command_line(ws, tmp_path):
    (ws.patches_dir / "fix").mkdir(parents=True)
    (ws.patches_dir / "fix" / "series.toml").write_text('name = "fix"\n')
    cells = matrix.load(ws, _write(tmp_path, """
[[cell]]
series = "base"
checks_from = "fix"
mode = "xen+domU"
[[cell]]
series = "fix"
mode = "xen+domU"
"""))
    base, fixed = cells
    assert base.series is None and base.checks_from == "fix" and fixed.checks_from is None
    assert base.argv()[2:5] == ["--base-only", "--checks-from", "fix"]
    _assert_runnable(".venv/bin/" + shlex.join(base.argv()))
    # The two base runs of a matrix (with and without a series' checks) are two rows.
    assert base.row == "base+checks-of-fix" and base.label != matrix.Cell(None, "linux", None, "xen+domU").label


@pytest.mark.parametrize("cell, message", [
    ('series = "fix"\nchecks_from = "fix"', "checks_from runs a series' checks on the base"),
    ('checks_from = "nope"', "unknown series 'nope'"),
    ('checks_from = 3', "'checks_from' must be a string"),
])
def test_checks_from_is_checked(ws, tmp_path, cell, message):
    (ws.patches_dir / "fix").mkdir(parents=True)
    (ws.patches_dir / "fix" / "series.toml").write_text('name = "fix"\n')
    with pytest.raises(UsageError, match=message):
        matrix.load(ws, _write(tmp_path, f"[[cell]]\n{cell}\n"))


def test_cli_checks_from_needs_base_only(ws):
    res = CliRunner().invoke(main, ["-w", str(ws.root), "ci", "--checks-from", "fix", "--mode", "guest"])
    assert res.exit_code == 2 and "--base-only" in res.output
