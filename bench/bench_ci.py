#!/usr/bin/env python3
"""kpt ci end to end, guest mode: cold, warm with nothing changed, and one patch changed.

    .venv/bin/python bench/bench_ci.py [--cold]

--cold runs first with an empty cache folder and an empty ccache (import, build
from scratch: 10-20 minutes on 2 cores). The one-patch case uses a throw-away
series (one patch to drivers/tty/serial/8250/8250_core.c, which the guest
profile builds) in a temporary workspace sharing the project's cache, applies
it, then changes the patch and runs again: re-apply, incremental build,
re-image and reboot.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kpatch_tool import pipeline, trees, workspace  # noqa: E402

PATCH = """From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: Bench <bench@example.org>
Date: Thu, 1 Jan 2026 00:00:00 +0000
Subject: [PATCH] serial: 8250: bench change

Signed-off-by: Bench <bench@example.org>
---
 drivers/tty/serial/8250/8250_core.c | 1 +
 1 file changed, 1 insertion(+)

diff --git a/drivers/tty/serial/8250/8250_core.c b/drivers/tty/serial/8250/8250_core.c
--- a/drivers/tty/serial/8250/8250_core.c
+++ b/drivers/tty/serial/8250/8250_core.c
@@ -1,3 +1,4 @@
+/* {text} */
 {l1}
 {l2}
 {l3}
"""


def run(ws, series=None):
    t = time.monotonic()
    res = pipeline.run_ci(ws, series, mode="guest")
    took = time.monotonic() - t
    stages = " ".join(f"{s.name}={s.status}" for s in res.stages)
    assert res.exit_code == 0, res.message
    return took, stages


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    rows = []
    ws = workspace.load()
    if args.cold:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cc:
            os.environ["KPT_CACHE"], os.environ["CCACHE_DIR"] = cache, cc
            cold_ws = workspace.load()
            rows.append(("cold (empty caches)", *run(cold_ws)))
            del os.environ["KPT_CACHE"], os.environ["CCACHE_DIR"]
    run(ws)
    rows.append(("warm, nothing changed", *run(ws)))
    src = trees.checkout(ws, "linux")
    head = (src / "drivers/tty/serial/8250/8250_core.c").read_text().splitlines()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "kpt.toml").write_text(f'cache_dir = "{ws.cache_dir}"\n'
                                       + (ws.root / "kpt.toml").read_text().split("[ci]")[0])
        os.symlink(ws.root / "kernel-configs", root / "kernel-configs")
        sdir = root / "patches" / "bench-onepatch"
        (sdir / "linux").mkdir(parents=True)
        (sdir / "series.toml").write_text('name = "bench-onepatch"\nversion = 1\nsummary = "bench"\n'
                                          '[trees.linux]\nbase = "debian/6.1.192-2"\n')
        (sdir / "cover.md").write_text("bench\n\nbench\n")
        (sdir / "linux" / "series").write_text("0001-bench.patch\n")
        os.environ["KPT_OUT"] = str(root / "out")
        bws = workspace.load(root)
        for n, text in enumerate(("first version", "second version")):
            (sdir / "linux" / "0001-bench.patch").write_text(
                PATCH.format(text=text, l1=head[0], l2=head[1], l3=head[2]))
            took, stages = run(bws, "bench-onepatch")
            rows.append(("series applied, first build in its worktree" if n == 0 else "one patch changed", took, stages))
    for name, t, stages in rows:
        print(f"{name:46} {t:8.1f} s   {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
