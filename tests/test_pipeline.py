"""kpt ci: run folders, manifest, the workspace lock, reports; the real guest run (slow)."""

from __future__ import annotations

import json
import time

import pytest

from kpatch_tool import pipeline, report, results
from kpatch_tool.errors import UsageError


def test_second_run_on_a_busy_workspace_is_refused_naming_the_holder(tmp_path):
    with pipeline.WorkspaceLock(tmp_path, "run-A"):
        with pytest.raises(UsageError, match=r"workspace is busy: kpt ci run run-A \(pid \d+\)"):
            with pipeline.WorkspaceLock(tmp_path, "run-B"):
                pass
    with pipeline.WorkspaceLock(tmp_path, "run-C"):
        pass


def test_unknown_mode_is_a_usage_error(tmp_ws):
    with pytest.raises(UsageError, match="--mode kvm"):
        pipeline.run_ci(tmp_ws(), mode="kvm")


def test_a_run_that_stops_early_still_gets_complete_red_results(tmp_ws, tmp_path, make_repo):
    """A bad base ref stops the trees stage: the report must say so, in JUnit too."""
    repo = make_repo("lin", {"Makefile": "all:\n"})
    ws = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n')
    res = pipeline.run_ci(ws, None, mode="guest", onto={"linux": "no-such-ref"})
    assert res.exit_code == 2 and res.failed_stage == "trees"
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["exit_code"] == 2
    assert manifest["error"]["stage"] == "trees"
    rr = results.load_json(res.run_dir / results.RESULTS_JSON)
    by = {c.name: c.status for c in rr.cases if c.classname == "stages.guest"}
    assert by["trees"] == "fail" and by["build"] == "skip"
    xml = (res.run_dir / results.RESULTS_XML).read_text()
    assert 'failures="1"' in xml
    html = (res.run_dir / report.REPORT_HTML).read_text()
    assert "Stopped at trees" in html and "<svg" in html


def test_report_of_a_deleted_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no such run folder"):
        report.load_manifest(tmp_path / "gone")


@pytest.mark.slow
def test_real_guest_ci_passes_and_a_warm_rerun_repeats_no_stage(project_ws, guest_build):
    first = pipeline.run_ci(project_ws, None, mode="guest")
    assert first.exit_code == 0, first.message
    assert [s.name for s in first.stages] == pipeline.STAGES
    start = time.monotonic()
    again = pipeline.run_ci(project_ws, None, mode="guest")
    took = time.monotonic() - start
    assert again.exit_code == 0
    status = {s.name: s.status for s in again.stages}
    assert status["build"] == "cached" and status["boot"] == "cached" and status["apply"] == "skipped"
    assert took < 30
    rr = results.load_json(again.run_dir / results.RESULTS_JSON)
    assert any(c.name == "kernel-release" and c.status == "pass" for c in rr.cases)


@pytest.mark.slow
def test_real_matrix_with_a_failing_cell_runs_every_cell(project_ws, guest_build, tmp_path):
    from kpatch_tool import matrix

    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_XEN_GRANT_DMA_OPS=y\n")  # no prompt: only XEN_VIRTIO selects it
    m = tmp_path / "m.toml"
    m.write_text(f'[[cell]]\nname = "bad-fragment"\nbase = "linux"\nfragments = ["{bad}"]\n\n'
                 '[[cell]]\nname = "good"\nbase = "linux"\n')
    outs = matrix.run(project_ws, matrix.load(project_ws, m))
    assert [(o.cell.name, o.exit_code, o.failed_stage) for o in outs] == [("bad-fragment", 4, "config"), ("good", 0, None)]


def test_source_for_a_series_reports_progress_through_a_one_argument_callback(series_ws, demo_series):
    """`kpt build --each/linux --series` pass the CLI's say(msg): apply must not call it with three."""
    said = []
    src, base = pipeline.source_for(series_ws, "linux", series="demo", progress=said.append)
    assert (src / "Makefile").exists() and base
    assert all(isinstance(m, str) for m in said)


def test_series_that_change_qemu_get_a_device_model_stage(project_ws):
    """The shipped series: virtio-xenbus carries QEMU patches, vring-dma-api depends on it
    (and has its own), netback-per-vif is Linux only."""
    from kpatch_tool import pipeline

    assert pipeline.device_model_tree(project_ws, "virtio-xenbus") == "qemu"
    assert pipeline.device_model_tree(project_ws, "vring-dma-api") == "qemu"
    assert pipeline.device_model_tree(project_ws, "virtio-xenbus-6.12") == "qemu"
    # A port patches qemu-10.2 itself: that, not its dependency's 7.2, is the device model.
    assert pipeline.device_model_tree(project_ws, "virtio-xenbus-7.2") == "qemu-10.2"
    assert pipeline.device_model_tree(project_ws, "vring-dma-api-7.2") == "qemu-10.2"
    assert pipeline.device_model_tree(project_ws, "netback-per-vif") is None


def test_a_xen_tree_adds_a_xen_stage_before_the_image_and_only_with_a_domU(project_ws):
    assert pipeline.stages_for(project_ws, "netback-per-vif", "xen+domU") == \
        ["trees", "apply", "config", "build", "image", "boot", "report"]
    assert pipeline.stages_for(project_ws, "netback-per-vif", "xen+domU", "xen") == \
        ["trees", "apply", "config", "build", "xen", "image", "boot", "report"]
    assert pipeline.stages_for(project_ws, "virtio-xenbus", "xen+domU", "xen") == \
        ["trees", "apply", "config", "build", "qemu", "xen", "image", "boot", "report"]
    assert "xen" not in pipeline.stages_for(project_ws, None, "guest", "xen")


def test_xen_tree_must_name_a_xen_tree_of_kpt_toml(project_ws):
    with pytest.raises(UsageError, match="--xen-tree qemu: not a Xen tree of kpt.toml \\(Xen trees: xen\\)"):
        pipeline.hypervisor_tree(project_ws, None, "qemu")
    assert pipeline.hypervisor_tree(project_ws, None, "xen") == "xen"
    assert pipeline.hypervisor_tree(project_ws, "netback-per-vif") is None


def test_a_series_that_patches_only_another_linux_tree_runs_on_that_tree(project_ws):
    """virtio-xenbus-6.12 carries its patches for linux-6.12 only: kpt ci builds 6.12
    without --onto; the 6.1 series and a plain base run stay on linux."""
    from kpatch_tool import pipeline

    assert pipeline.default_linux_tree(project_ws, "virtio-xenbus-6.12") == "linux-6.12"
    assert pipeline.default_linux_tree(project_ws, "vring-dma-api") == "linux"
    assert pipeline.default_linux_tree(project_ws, None) == "linux"


def test_base_only_runs_the_base_even_when_kpt_toml_names_a_default_series(tmp_ws, tmp_path, make_repo):
    """kpt.toml [ci] names a series; --base-only must run no series at all."""
    from click.testing import CliRunner

    from kpatch_tool.cli import main

    repo = make_repo("lin", {"Makefile": "all:\n"})
    ws = tmp_ws(f'[trees.linux]\nsource = "{repo}"\n[ci]\nseries = ["no-such-series"]\nmode = "guest"\n')
    r = CliRunner().invoke(main, ["-w", str(ws.root), "ci", "--base-only", "--onto", "linux=no-such-ref"])
    assert r.exit_code == 2, r.output
    runs = sorted((tmp_path / "out").glob("*/manifest.json"))
    manifest = json.loads(runs[-1].read_text())
    assert manifest["inputs"]["series"] is None and manifest["error"]["stage"] == "trees"
    r = CliRunner().invoke(main, ["-w", str(ws.root), "ci", "--base-only", "some-series"])
    assert r.exit_code == 2 and "--base-only runs no series" in r.output
