"""The emitted GitLab pipeline executed by a real GitLab CI executor (gitlab-ci-local, shell
executor, every job in its own copy of the repository, artifacts passed by `needs:`), and
compared with `kpt ci --matrix` run here: the same verdict per cell and the same manifests.

The workspace is a small git repository of its own: kpt.toml pinning the project's Linux 6.1
(the shared cache's import and minimal `guest` build are reused), the project's kernel
configs, a fixture series and a matrix. GitHub's workflow is not executed: there is no
GitHub Actions runner that works offline here (act needs Docker images and the actions it
`uses:` from GitHub), so it keeps its schema test in test_matrix.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomlkit
import yaml

from conftest import PROJECT, git

FIXTURE_PATCH = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: Test Author <author@example.org>
Date: Tue, 2 Jan 2024 03:04:05 +0000
Subject: [PATCH] Documentation: add a note for kpt's pipeline test

No build reads it: the series' kernel is the base's, built in the series' own worktree.

Signed-off-by: Test Author <author@example.org>
---
 Documentation/kpt-pipeline-fixture.txt | 1 +
 1 file changed, 1 insertion(+)
 create mode 100644 Documentation/kpt-pipeline-fixture.txt

diff --git a/Documentation/kpt-pipeline-fixture.txt b/Documentation/kpt-pipeline-fixture.txt
new file mode 100644
index 000000000000..{blob}
--- /dev/null
+++ b/Documentation/kpt-pipeline-fixture.txt
@@ -0,0 +1 @@
+kpt pipeline fixture
-- \n2.39.5
"""

SERIES_TOML = """\
name = "pipeline-fixture"
version = 1
summary = "A one-patch series for the executed pipeline test"

[trees.linux]

[[smoke]]
name = "proc-version"
where = "guest"
run = "cat /proc/version"
expect = "Linux version"
"""

# CI-sized: one build job feeding two boot jobs, and a cell that ends at its config (exit 4),
# a job of its own.
BASE_CELLS = """\
[[cell]]
name = "base-guest"
base = "linux"
mode = "guest"

[[cell]]
name = "base-guest-2cpu"
base = "linux"
mode = "guest"
qemu_args = ["-smp", "2"]

[[cell]]
name = "bad-fragment"
base = "linux"
mode = "guest"
fragments = ["bad.config"]
expect = 4
"""

SERIES_CELL = """
[[cell]]
name = "fixture-series"
series = "pipeline-fixture"
base = "linux"
mode = "guest"
"""


def gitlab_ci_local() -> Path:
    """scripts/setup.sh installs the pinned gitlab-ci-local into the venv."""
    for venv in (Path(sys.prefix), PROJECT / ".venv"):
        exe = venv / "gitlab-ci-local" / "node_modules" / ".bin" / "gitlab-ci-local"
        if exe.exists():
            return exe
    pytest.fail("gitlab-ci-local is not installed: run scripts/setup.sh (it installs the pinned version "
                "from scripts/gitlab-ci-local/ into .venv/gitlab-ci-local)")


def _workspace(root: Path, with_series: bool) -> Path:
    root.mkdir()
    project = tomllib.loads((PROJECT / "kpt.toml").read_text())
    (root / "kpt.toml").write_text(tomlkit.dumps({"apt": project["apt"], "trees": {"linux": project["trees"]["linux"]}}))
    shutil.copytree(PROJECT / "kernel-configs", root / "kernel-configs")
    (root / "ci").mkdir()
    (root / "ci" / "bad.config").write_text("CONFIG_XEN_GRANT_DMA_OPS=y\n")  # no prompt: not settable
    (root / "ci" / "matrix.toml").write_text(BASE_CELLS + (SERIES_CELL if with_series else ""))
    s = root / "patches" / "pipeline-fixture"
    (s / "linux").mkdir(parents=True)
    (s / "series.toml").write_text(SERIES_TOML)
    blob = subprocess.run(["git", "hash-object", "--stdin"], input="kpt pipeline fixture\n", text=True,
                          capture_output=True, check=True).stdout.strip()[:12]
    (s / "linux" / "0001-Documentation-add-a-note.patch").write_text(FIXTURE_PATCH.format(blob=blob))
    (s / "linux" / "series").write_text("0001-Documentation-add-a-note.patch\n")
    (root / ".gitignore").write_text("out/\n.gitlab-ci-local/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "workspace")
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPT_OUT", "KPT_WORKSPACE"))}
    env["PYTHONPATH"] = str(PROJECT)
    return env


def _job_manifests(build_root: Path) -> dict[str, dict]:
    """Each job's run manifest, from the job's own copy of the repository."""
    out = {}
    for job_dir in build_root.iterdir():
        found = list(job_dir.glob(f"out/{job_dir.name}/*/manifest.json"))
        if found:
            out[job_dir.name] = json.loads(found[0].read_text())
    return out


def _comparable(m: dict) -> dict:
    inp = {k: v for k, v in m["inputs"].items() if k not in ("from_artifacts", "force")}
    bz = ((m["outputs"].get("build") or {}).get("artifacts") or {}).get("bzImage") or {}
    return {"inputs": inp, "kernel_sha256": bz.get("sha256"), "exit_code": m["exit_code"]}


def _run_pipeline(ws: Path, env: dict) -> tuple[int, str, dict[str, tuple[str, int]]]:
    kpt = f"{sys.executable} -m kpatch_tool.cli"
    res = subprocess.run([str(gitlab_ci_local()), "--shell-isolation", "--file", "kpt-child.yml", "--concurrency", "1",
                          "--variable", f"KPT={kpt}", "--variable", "KPT_SETUP=true",
                          "--variable", "KPT_CI_ARGS=--rerun-boot", "--no-color"],
                         cwd=ws, env=env, capture_output=True, text=True, timeout=3600)
    status = {}
    for m in re.finditer(r"^\s*(PASS|FAIL)\s+(\S+)", res.stdout, re.M):
        status[m.group(2)] = (m.group(1), 0)
    for m in re.finditer(r"^(\S+) finished in .*?FAIL (\d+)", res.stdout, re.M):
        status[m.group(1)] = ("FAIL", int(m.group(2)))
    return res.returncode, res.stdout + res.stderr, status


@pytest.mark.parametrize("with_series", [
    pytest.param(False, marks=pytest.mark.slow, id="ci-sized"),
    pytest.param(True, marks=[pytest.mark.slow, pytest.mark.fleet], id="with-fixture-series"),
])
def test_emitted_gitlab_pipeline_runs_and_agrees_with_the_local_matrix(tmp_path, with_series, request):
    ws = _workspace(tmp_path / "ws", with_series)
    env = _env(tmp_path)
    if with_series:
        # A series worktree belongs to the workspace folder that applied it, and every job here
        # is a folder of its own: a cache of the test's own keeps the machine's free of them.
        env["KPT_CACHE"] = str(tmp_path / "cache")
    else:
        request.getfixturevalue("guest_build")  # the base kernel, built once per session
    kpt = [sys.executable, "-m", "kpatch_tool.cli"]
    emit = subprocess.run([*kpt, "ci", "--matrix", "ci/matrix.toml", "--emit", "gitlab", "-o", "kpt-child.yml"],
                          cwd=ws, env=env, capture_output=True, text=True)
    assert emit.returncode == 0, emit.stderr
    doc = yaml.safe_load((ws / "kpt-child.yml").read_text())
    jobs = {k: v for k, v in doc.items() if k not in ("stages", "variables")}
    for name, job in jobs.items():
        assert job["artifacts"]["reports"]["junit"] == f"out/{name}/*/results.xml", name
    git(ws, "add", "kpt-child.yml")
    git(ws, "commit", "-q", "-m", "child pipeline")

    rc, log, status = _run_pipeline(ws, env)
    # Every job ran and ended 0 (each cell as expected: the bad fragment's build job expects 4).
    assert set(status) == set(jobs), log[-3000:]
    assert all(s == ("PASS", 0) for s in status.values()), (status, log[-3000:])
    assert rc == 0, log[-3000:]
    manifests = _job_manifests(ws / ".gitlab-ci-local" / "builds")
    # The boot jobs really booted the build job's kernel, from its verified artifacts.
    for name, job in jobs.items():
        if job["stage"] == "boot" and job["needs"]:
            m = manifests[name]
            assert m["inputs"]["from_artifacts"]["run_id"] == manifests[job["needs"][0]["job"]]["run_id"]
            assert {s["name"]: s["status"] for s in m["stages"]}["boot"] == "ok"
            junit = list((ws / ".gitlab-ci-local" / "builds" / name).glob(f"out/{name}/*/results.xml"))
            assert junit and 'name="boot"' in junit[0].read_text()

    # Run here from the folder of the job that applied the series (its owner); a copy of ws.
    here = ws / ".gitlab-ci-local" / "builds" / "build-pipeline-fixture-linux-guest"
    local = subprocess.run([*kpt, "ci", "--matrix", "ci/matrix.toml", "--json", "--rerun-boot"],
                           cwd=here if with_series else ws,
                           env={**env, "KPT_OUT": str(tmp_path / "local-out")}, capture_output=True, text=True)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    cells = json.loads(local.stdout[local.stdout.index("["):local.stdout.rindex("]") + 1])
    # The same verdict: every cell as expected here, every job green there.
    assert all(c["as_expected"] for c in cells) and rc == 0
    # The same runs: each cell's local manifest equals the manifest of the job that ended that cell.
    for c in cells:
        local_m = json.loads((Path(c["run_dir"]) / "manifest.json").read_text())
        label = local_m["run_id"].split("-", 2)[2]
        job = f"kpt-{label}" if f"kpt-{label}" in manifests else f"build-{label}"
        assert _comparable(manifests[job]) == _comparable(local_m), job
