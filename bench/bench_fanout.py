#!/usr/bin/env python3
"""One build fanning out to N boot jobs (the emitted GitLab pipeline run by gitlab-ci-local)
against the same N cells run one after another by `kpt ci --matrix`.

    .venv/bin/python bench/bench_fanout.py [-n 4] [--concurrency 4]

The cells are the base Linux 6.1 `guest` kernel booted N ways (-smp 1..N). Both sides boot
for real (--rerun-boot) and share this machine's kpt cache, so the build is warm for both:
what differs is that the pipeline's boots run side by side, each in a job of its own (its own
copy of the repository, the kernel passed as verified artifacts), and the sequential run
boots one cell after the other. On a fleet each boot job is another runner; here they share
2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="kpt-fanout-"))
    ws = top / "ws"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(ws)], check=True)
    cells = "".join(f'[[cell]]\nname = "guest-smp{i}"\nbase = "linux"\nmode = "guest"\nqemu_args = ["-smp", "{i}"]\n\n'
                    for i in range(1, args.n + 1))
    (ws / "ci" / "fanout.toml").write_text(cells)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "HOME": str(Path.home())}
    kpt = [sys.executable, "-m", "kpatch_tool.cli"]
    subprocess.run([*kpt, "ci", "--matrix", "ci/fanout.toml", "--emit", "gitlab", "-o", "kpt-child.yml"],
                   cwd=ws, env=env, check=True, capture_output=True)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.org", "commit", "-qm", "fanout"],
                   cwd=ws, check=True)
    glci = Path(sys.prefix) / "gitlab-ci-local/node_modules/.bin/gitlab-ci-local"
    if not glci.exists():
        glci = ROOT / ".venv/gitlab-ci-local/node_modules/.bin/gitlab-ci-local"
    t0 = time.monotonic()
    res = subprocess.run([str(glci), "--shell-isolation", "--file", "kpt-child.yml", "--concurrency",
                          str(args.concurrency), "--timestamps", "--no-color",
                          "--variable", f"KPT={' '.join(kpt)}", "--variable", "KPT_SETUP=true",
                          "--variable", "KPT_CI_ARGS=--rerun-boot"], cwd=ws, env=env, capture_output=True, text=True)
    pipeline = time.monotonic() - t0
    print(f"pipeline (1 build job, {args.n} boot jobs, concurrency {args.concurrency}): {pipeline:.1f} s, "
          f"exit {res.returncode}", flush=True)
    if res.returncode:
        print(res.stdout[-3000:])
    t0 = time.monotonic()
    res = subprocess.run([*kpt, "ci", "--matrix", "ci/fanout.toml", "--rerun-boot"], cwd=ws,
                         env={**env, "KPT_OUT": str(top / "out-seq")}, capture_output=True, text=True)
    seq = time.monotonic() - t0
    print(f"kpt ci --matrix, {args.n} cells one after another: {seq:.1f} s, exit {res.returncode}")
    print(f"folders in {top}")


if __name__ == "__main__":
    main()
