"""The host prerequisites list: one file, read by setup.sh, doctor and every stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpatch_tool import prereqs
from kpatch_tool.errors import EXIT_PREREQ, PrereqError

PROJECT = Path(__file__).resolve().parent.parent


def _path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH with every tool of the real PATH but the hidden ones (symlinks)."""
    d = tmp_path / "bin"
    d.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name in hidden or (d / name).exists():
                continue
            (d / name).symlink_to(Path(folder) / name)
    return str(d)


def test_setup_installs_exactly_the_packages_kpt_checks():
    """setup.sh reads column 1 of the same file kpt reads: the two cannot disagree."""
    out = subprocess.run(["awk", '!/^[[:space:]]*#/ && NF { print $1 }', str(PROJECT / "kpatch_tool/data/packages.txt")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [p.name for p in prereqs.packages()]
    assert "kpatch_tool/data/packages.txt" in (PROJECT / "scripts/setup.sh").read_text()
    assert {"kmod", "meson", "pkg-config", "libxen-dev"} <= set(out)


def test_a_hidden_depmod_stops_the_build_stage_naming_kmod(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_without(tmp_path, "depmod"))
    with pytest.raises(PrereqError, match=r"depmod \(kmod\).*apt-get install kmod") as exc:
        prereqs.require("build")
    assert exc.value.exit_code == EXIT_PREREQ


def test_doctor_reports_a_hidden_depmod_as_missing_kmod(tmp_path, monkeypatch):
    path = _path_without(tmp_path, "depmod")
    res = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "doctor", "--offline", "--json"],
                         capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert res.returncode == EXIT_PREREQ
    assert "kmod" in res.stderr


def test_parsing_understands_every_kind_of_check():
    pkgs = prereqs.load("a  build  x /y perl:Z git:w\nb  setup  -\n# c\n")
    assert pkgs[0] == prereqs.Package("a", ("build",), ("x", "/y", "perl:Z", "git:w"))
    assert pkgs[1].checks == ()
