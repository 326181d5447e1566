"""The package as a user installs it: a wheel, not an editable checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent

RENDER_ALL = """
import importlib.resources, sys
from kpatch_tool import templating, prereqs
names = sorted(p.name for p in importlib.resources.files("kpatch_tool").joinpath("templates").iterdir())
env = templating.env()
for n in names:
    env.get_template(n)  # parses: a template missing from the wheel or broken fails here
assert len(prereqs.packages()) > 10
print(len(names), "templates")
"""


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a new venv (not editable), run kpt from another folder."""
    # Nothing of the checkout may leak in: not on PYTHONPATH (a kpatch_tool there would
    # make pip think the wheel is installed already), not as the workspace.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KPT_WORKSPACE")}
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(PROJECT)],
                   check=True, capture_output=True, timeout=600, env=env)
    [wheel] = dist.glob("kpatch_tool-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin/python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=600,
                   env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = subprocess.run([str(env_dir / "bin/kpt"), "--version"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "kpt" in version.stdout
    rendered = subprocess.run([str(py), "-c", RENDER_ALL], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert int(rendered.stdout.split()[0]) == len(list((PROJECT / "kpatch_tool/templates").iterdir()))
    # A fast command from outside any workspace: it works on a workspace of its own.
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "kpt.toml").write_text(f'cache_dir = "{tmp_path / "cache"}"\n')
    listing = subprocess.run([str(env_dir / "bin/kpt"), "--workspace", str(ws), "series", "list"], cwd=elsewhere,
                             env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
