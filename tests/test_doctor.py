"""kpt doctor: tells what is missing and how to install it."""

from __future__ import annotations

from click.testing import CliRunner

from kpatch_tool import doctor
from kpatch_tool.cli import main


def test_tools_missing_from_path_are_reported_with_the_apt_line(tmp_path, tmp_ws):
    ws = tmp_ws()
    empty = tmp_path / "bin"
    empty.mkdir()
    report = doctor.run_checks(ws, env_path=str(empty))
    by_name = {c.name: c for c in report.checks}
    assert by_name["build-essential"].status == "missing"
    assert "gcc" in by_name["build-essential"].detail
    assert by_name["build-essential"].fix == "apt-get install -y build-essential"
    assert by_name["qemu-system-x86"].fix == "apt-get install -y qemu-system-x86"
    assert by_name["kmod"].fix == "apt-get install -y kmod"
    assert {c.name for c in report.failed} >= {"git", "build-essential", "kmod", "qemu-system-x86"}


def test_this_host_passes_and_says_kvm_falls_back_to_tcg(tmp_ws):
    report = doctor.run_checks(tmp_ws())
    assert report.failed == []
    kvm = {c.name: c for c in report.checks}["kvm"]
    usable, why = doctor.kvm_usable()
    assert (kvm.status == "ok") == usable
    if not usable:
        assert "TCG" in kvm.detail


def test_cli_exits_7_when_a_prerequisite_is_missing(tmp_path, tmp_ws):
    ws = tmp_ws()
    empty = tmp_path / "bin"
    empty.mkdir()
    res = CliRunner().invoke(main, ["-w", str(ws.root), "doctor"], env={"PATH": str(empty)})
    assert res.exit_code == 7, res.output
    assert "missing host prerequisites" in res.output
    assert "apt-get install -y build-essential" in res.output
