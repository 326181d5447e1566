"""A build job's exported kernel: copied with hashes, found, checked before any boot uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpatch_tool import artifacts
from kpatch_tool import build as buildmod
from kpatch_tool.errors import UsageError
from kpatch_tool.runfolder import MANIFEST


def _build(tmp_path: Path) -> buildmod.BuildResult:
    """A build folder laid out as kbuild leaves it (small files in place of a real kernel)."""
    b = tmp_path / "build"
    for rel, text in {"arch/x86/boot/bzImage": "kernel", "System.map": "map", ".config": "CONFIG_X=y\n",
                      "include/config/kernel.release": "6.1.0\n", "staging/lib/modules/6.1.0/modules.dep": "",
                      "staging/lib/modules/6.1.0/kernel/a.ko": "ko", "vmlinux": "big", "init/main.o": "obj",
                      buildmod.STAMP: json.dumps({"identity": {"config_hash": "c"}, "warnings": ["w"]})}.items():
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_text(text)
    return buildmod.BuildResult(tree="linux", srctree=tmp_path, build_dir=b, cached=False, duration=1.0,
                                log=b / "build.log", profile="guest", config_hash="c" * 64, kernel_release="6.1.0")


def _run(tmp_path: Path, name: str, b: buildmod.BuildResult, exit_code: int = 0) -> Path:
    run = tmp_path / "out" / name
    run.mkdir(parents=True)
    exported = artifacts.export_build(run, b)
    (run / MANIFEST).write_text(json.dumps({
        "run_id": name, "inputs": {"mode": "guest", "series": None}, "stages": [], "exit_code": exit_code,
        "outputs": {"exported": exported}}))
    return run


def test_export_keeps_what_a_boot_needs_and_the_boot_side_checks_it(tmp_path):
    run = _run(tmp_path, "20260101-000000-a", _build(tmp_path))
    files = json.loads((run / MANIFEST).read_text())["outputs"]["exported"]["files"]
    assert {"arch/x86/boot/bzImage", ".config", "staging/lib/modules/6.1.0/kernel/a.ko", buildmod.STAMP} <= set(files)
    assert "vmlinux" not in files and "init/main.o" not in files
    found, manifest, b = artifacts.load_build(tmp_path / "out")
    assert found == run and manifest["run_id"] == run.name
    assert b.bzimage.read_text() == "kernel" and b.modules_dir == run / "build" / "staging"
    assert b.kernel_release == "6.1.0" and b.profile == "guest" and b.identity == {"config_hash": "c"}


def test_a_replaced_artifact_is_named_and_not_booted(tmp_path):
    run = _run(tmp_path, "20260101-000000-a", _build(tmp_path))
    (run / "build" / "arch/x86/boot/bzImage").write_text("another kernel")
    with pytest.raises(UsageError, match=r"bzImage: sha256 differs from the build manifest's"):
        artifacts.load_build(run)


def test_a_missing_artifact_is_named(tmp_path):
    run = _run(tmp_path, "20260101-000000-a", _build(tmp_path))
    (run / "build" / "staging/lib/modules/6.1.0/kernel/a.ko").unlink()
    with pytest.raises(UsageError, match=r"a\.ko: missing from the build artifacts"):
        artifacts.load_build(run)


def test_the_newest_build_run_in_a_folder_is_used(tmp_path):
    b = _build(tmp_path)
    _run(tmp_path, "20260101-000000-a", b)
    newer = _run(tmp_path, "20260102-000000-a", b)
    (tmp_path / "out" / "not-a-run").mkdir()
    assert artifacts.find_run(tmp_path / "out") == newer


def test_a_failed_build_run_exports_nothing_to_boot(tmp_path):
    run = _run(tmp_path, "20260101-000000-a", _build(tmp_path), exit_code=5)
    with pytest.raises(UsageError, match="did not export a kernel"):
        artifacts.load_build(run)


def test_a_folder_without_build_runs_says_how_to_make_one(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="--stop-after build"):
        artifacts.find_run(tmp_path / "empty")
    with pytest.raises(UsageError, match="no such folder"):
        artifacts.find_run(tmp_path / "gone")
