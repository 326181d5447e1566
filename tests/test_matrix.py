"""Matrix files: cells, bad input, and the CI configurations emitted for a fleet."""

from __future__ import annotations

import json
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
    """The command must be a `kpt ci` invocation click accepts; the parsed parameters."""
    argv = shlex.split(cmd)
    assert argv[0] in (".venv/bin/kpt", "$KPT") and argv[1] == "ci"
    if argv[0] == "$KPT":
        assert argv[-1] == "$KPT_CI_ARGS"  # empty unless the runner sets it
        argv = argv[:-1]
    ctx = main.commands["ci"].make_context("ci", argv[2:])
    assert ctx.params["mode"] in ("guest", "xen", "xen+domU")
    # What the fleet runs is what `kpt ci --matrix` runs: a base cell runs no series.
    assert ctx.params["series"] or ctx.params["base_only"] or ctx.params["from_artifacts"]
    return ctx.params


def test_emitted_gitlab_pipeline_feeds_boot_jobs_from_one_build_job_per_kernel(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    doc = yaml.safe_load(matrix.emit_gitlab(ws, cells))
    assert doc["stages"] == ["build", "boot"] and doc["variables"]["KPT"] == ".venv/bin/kpt"
    jobs = {k: v for k, v in doc.items() if k not in ("stages", "variables")}
    builds = {k: v for k, v in jobs.items() if v["stage"] == "build"}
    boots = {k: v for k, v in jobs.items() if v["stage"] == "boot"}
    # 6.1 guest, 6.1 xen-dom0 (xen+domU and the xen cell expecting a boot failure share it), 6.12 the same
    assert len(builds) == 4 and len(boots) == len(cells) == 5
    for name, job in builds.items():
        assert job["script"][0] == "$KPT_SETUP"
        params = _assert_runnable(job["script"][1])
        assert params["stop_after"] == "build" and params["profile"]
        assert job["artifacts"]["reports"]["junit"] == f"out/{name}/*/results.xml"
    for job in boots.values():
        params = _assert_runnable(job["script"][1])
        (need,) = job["needs"]
        assert need["artifacts"] is True and need["job"] in builds
        assert params["from_artifacts"] == f"out/{need['job']}"
        assert job["artifacts"]["reports"]["junit"].endswith("/*/results.xml")
    shared = [j for j in boots.values() if j["needs"][0]["job"] == "build-base-linux-xen-dom0"]
    assert len(shared) == 2  # one build feeds two boot cells
    expect6 = [j for j in boots.values() if "--expect 6" in j["script"][1]]
    assert len(expect6) == 1 and "virtio-net-pci" in expect6[0]["script"][1]


def test_a_cell_expected_to_end_otherwise_than_a_boot_runs_whole_in_one_job(ws, tmp_path):
    cells = matrix.load(ws, _write(tmp_path, '[[cell]]\nname = "bad"\nbase = "linux"\nexpect = 4\n'
                                             '[[cell]]\nname = "oops"\nbase = "linux"\nexpect = 6\n'))
    doc = yaml.safe_load(matrix.emit_gitlab(ws, cells))
    jobs = {k: v for k, v in doc.items() if k not in ("stages", "variables")}
    assert set(jobs) == {"build-base-linux-guest", "kpt-oops", "kpt-bad"}
    assert jobs["kpt-bad"]["needs"] == [] and jobs["kpt-oops"]["needs"][0]["job"] == "build-base-linux-guest"
    params = _assert_runnable(jobs["kpt-bad"]["script"][1])
    assert params["expect"] == 4 and params["stop_after"] is None and params["from_artifacts"] is None


def test_emitted_fragments_are_named_relative_to_the_workspace(ws, tmp_path):
    (ws.root / "ci").mkdir()
    (ws.root / "ci" / "extra.config").write_text("CONFIG_XEN_VIRTIO=y\n")
    m = ws.root / "ci" / "m.toml"
    m.write_text('[[cell]]\nbase = "linux"\nfragments = ["extra.config"]\n')
    cells = matrix.load(ws, m)
    assert "--fragment ci/extra.config" in matrix.emit_gitlab(ws, cells)
    assert ["--fragment", "ci/extra.config"] == cells[0].argv(ws)[4:6]


def test_emitted_github_workflow_has_one_matrix_entry_per_cell(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    doc = yaml.safe_load(matrix.emit_github(ws, cells))
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


def test_from_artifacts_refuses_options_that_would_change_the_kernel(ws, tmp_path):
    res = CliRunner().invoke(main, ["-w", str(ws.root), "ci", "--from-artifacts", str(tmp_path), "--profile", "guest"])
    assert res.exit_code == 2 and "--from-artifacts boots the build run's kernel" in res.output


def test_summary_marks_expected_failures(ws, tmp_path):
    cells = _cells(ws, tmp_path)
    outs = [matrix.CellOutcome(cells[0], 0, None, None), matrix.CellOutcome(cells[1], 4, "config", None),
            matrix.CellOutcome(cells[4], 6, "boot", None)]
    cols, rows = matrix.summary_rows(outs)
    row = dict(rows)["base"]
    assert row[cells[0].column] == "pass"
    assert row[cells[1].column] == "config (exit 4) - unexpected"
    assert row[cells[4].column] == "boot (exit 6) - as expected"


def test_each_emitted_command_records_the_same_inputs_as_its_local_cell(ws, tmp_path, monkeypatch):
    """A cell that stops at its trees stage (an unknown ref) is quick to run both ways; the
    slow pipeline test compares whole runs (tests/test_matrix_pipeline.py)."""
    (ws.root / "ci").mkdir()
    (ws.root / "ci" / "extra.config").write_text("CONFIG_XEN_VIRTIO=y\n")
    m = ws.root / "ci" / "m.toml"
    m.write_text('[[cell]]\nname = "c"\nbase = "linux=no-such-ref"\nmode = "xen"\nfragments = ["extra.config"]\n'
                 'qemu_args = ["-device", "virtio-net-pci"]\nexpect = 2\n')
    (cell,) = matrix.load(ws, m)
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "local"))
    (local,) = matrix.run(ws, [cell])
    want = json.loads((local.run_dir / "manifest.json").read_text())["inputs"]
    assert want["fragments"] == ["ci/extra.config"] and want["expect"] == 2 and want["onto"] == {"linux": "no-such-ref"}
    doc = yaml.safe_load(matrix.emit_gitlab(ws, [cell]))
    emitted = {"github": cell.argv(ws), "gitlab": shlex.split(doc["kpt-c"]["script"][1])[1:-1]}
    for what, argv in emitted.items():
        monkeypatch.setenv("KPT_OUT", str(tmp_path / what))
        monkeypatch.chdir(ws.root)
        res = CliRunner().invoke(main, ["-w", str(ws.root), *argv])
        assert res.exit_code == 0, (what, res.output)  # ended as the cell expects
        (run,) = (tmp_path / what).glob("*/manifest.json")
        got = json.loads(run.read_text())["inputs"]
        assert got == want, what


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
    assert base.argv()[1:4] == ["--base-only", "--checks-from", "fix"]
    _assert_runnable(".venv/bin/kpt " + shlex.join(base.argv()))
    # Its checks are not the build's: the fleet runs it whole, in one job.
    jobs = yaml.safe_load(matrix.emit_gitlab(ws, [base]))
    (job,) = [j for k, j in jobs.items() if k.startswith("kpt-")]
    assert "--checks-from" in job["script"][1] and not any(k.startswith("build-") for k in jobs)
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


def test_a_cell_without_a_base_runs_on_the_series_own_linux_tree(project_ws, tmp_path):
    """`kpt ci netback-per-vif-7.2` builds linux-7.2; its matrix cell must not fall back to linux."""
    port, base = matrix.load(project_ws, _write(tmp_path, """
[[cell]]
series = "netback-per-vif-7.2"
mode = "xen+domU"
[[cell]]
series = "base"
mode = "xen"
"""))
    assert (port.tree, base.tree) == ("linux-7.2", "linux")
    assert port.argv()[1:4] == ["netback-per-vif-7.2", "--onto", "linux-7.2"]


def test_a_cell_can_ask_for_the_long_form_of_the_checks(ws, tmp_path):
    cells = matrix.load(ws, _write(tmp_path, '[[cell]]\nmode = "guest"\nlong_checks = true\n[[cell]]\nmode = "guest"\n'))
    assert [c.long_checks for c in cells] == [True, False]
    assert "--long-checks" in cells[0].argv() and "--long-checks" not in cells[1].argv()
    _assert_runnable(".venv/bin/kpt " + shlex.join(cells[0].argv()))
    with pytest.raises(UsageError, match="'long_checks' must be true or false"):
        matrix.load(ws, _write(tmp_path, '[[cell]]\nlong_checks = "yes"\n'))
