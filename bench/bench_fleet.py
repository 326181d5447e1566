#!/usr/bin/env python3
"""Runners sharing caches: a second runner skips the kernel build; ccache's remote storage.

    .venv/bin/python bench/bench_fleet.py [--dir DIR] [--a-cache DIR] [--ccache]

`kpt ci --base-only --mode guest` runs, each a "runner" with a cache folder of its own
(KPT_CACHE), all pointed at one shared folder ([fleet] through KPT_SHARED_CACHE and
KPT_CCACHE_REMOTE):

  A  a runner that has built this kernel before (--a-cache, default this machine's kpt
     cache): its build is a local hit, and is published to the shared folder;
  B  a clean kpt cache and an empty local ccache: the build is fetched, make never starts.

With --ccache, two builds more (both through kpt's machine-wide build lock):
  A2 runner A's kernel built again in a new build folder (B's tree, A's warm local ccache
     with CCACHE_RESHARE=1, so its hits are written to the remote storage too);
  C  runner B with its build folder removed and the shared build cache off, an empty local
     ccache: make runs and the objects come from the remote storage.

Prints each run's wall time, its stages' times and the ccache figures from its manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(name: str, env: dict[str, str], out: Path) -> dict:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "kpatch_tool.cli", "ci", "--base-only", "--mode", "guest"],
                         cwd=ROOT, env={**env, "KPT_OUT": str(out), "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    runs = sorted(out.iterdir())
    m = json.loads((runs[-1] / "manifest.json").read_text())
    stages = {s["name"]: f'{s["status"]} {s["end"] - s["start"]:.1f}s' for s in m["stages"]}
    b = m["outputs"].get("build", {})
    row = {"runner": name, "exit": res.returncode, "wall_s": round(wall, 1), "stages": stages,
           "fetched_from": b.get("fetched_from"), "ccache": b.get("ccache")}
    print(json.dumps(row), flush=True)
    if res.returncode:
        print(res.stdout[-2000:], res.stderr[-2000:], file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--a-cache", type=Path, default=Path.home() / ".cache" / "kpt")
    ap.add_argument("--ccache", action="store_true")
    args = ap.parse_args()
    top = args.dir or Path(tempfile.mkdtemp(prefix="kpt-fleet-"))
    shared = top / "shared"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KPT_", "CCACHE_"))}
    fleet = {"KPT_SHARED_CACHE": str(shared), "KPT_CCACHE_REMOTE": f"file:{shared / 'ccache'}"}
    run("A", {**base, **fleet, "KPT_CACHE": str(args.a_cache)}, top / "out-A")
    b_env = {**base, **fleet, "KPT_CACHE": str(top / "B"), "CCACHE_DIR": str(top / "B-ccache")}
    run("B", b_env, top / "out-B")
    if args.ccache:
        builds = list((top / "B" / "worktrees").rglob(".kpt-build-guest-*"))
        for d in builds:
            shutil.rmtree(d)
        no_shared = {k: v for k, v in b_env.items() if k != "KPT_SHARED_CACHE"}
        run("A2", {**no_shared, "CCACHE_DIR": os.environ.get("CCACHE_DIR", str(Path.home() / ".cache/ccache")),
                   "CCACHE_RESHARE": "1"}, top / "out-A2")
        for d in builds:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(top / "B-ccache", ignore_errors=True)
        run("C", no_shared, top / "out-C")
    print(f"folders in {top}")


if __name__ == "__main__":
    main()
