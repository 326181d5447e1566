#!/usr/bin/env python3
"""Kernel builds: kpt against the plain tools, in one run, on the same tree and config.

Measured (each printed with its ratio):
  cold      kpt build with an empty ccache (CCACHE_DIR in a temp folder)
  warm      the same build folder cleaned (`make clean`) and rebuilt: ccache hits
  no-op     kpt build again with nothing changed (make is not started)
  one-file  one driver file touched, rebuilt
  module    `kpt build module DIR` after a change in DIR (xen-dom0 profile only)
  tuxmake   `tuxmake --runtime null` building the same tree with the same .config (if installed)

    .venv/bin/python bench/bench_build.py [--profile guest] [--skip-cold] [--skip-tuxmake] [--tuxmake PATH]

The cold and tuxmake runs take about 10 minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kpatch_tool import build, pipeline, trees, workspace  # noqa: E402


def timed(fn):
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="guest")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-tuxmake", action="store_true")
    ap.add_argument("--tuxmake", default=shutil.which("tuxmake"),
                    help="tuxmake to compare with (default: the one on PATH; `pip install tuxmake` in a venv)")
    args = ap.parse_args()
    # The machine's kernel-build lock is held for the whole bench: no other build runs
    # beside the ones measured (tuxmake's included), and no measured build waits for one.
    # kpt's own builds take a lock of the bench's instead, or they would wait for this one.
    with build.build_lock(progress=print), tempfile.TemporaryDirectory() as own:
        os.environ["KPT_BUILD_LOCK"] = str(Path(own) / "kbuild.lock")
        return bench(args)


def bench(args) -> int:
    ws = workspace.load()
    src = trees.checkout(ws, "linux")
    rows = []
    cfg = pipeline.config_for(ws, src, args.profile)

    def kbuild(force=False):
        return build.build_linux(ws, srctree=src, tree="linux", profile=args.profile, config_text=cfg.config_text,
                                 config_hash=cfg.config_hash, force=force)

    res = kbuild()  # make sure it exists (and is warm in ccache)
    bdir = res.build_dir
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as cc:
            os.environ["CCACHE_DIR"] = cc
            subprocess.run(["make", "-s", "-C", str(src), f"O={bdir}", "clean"], check=True)
            t, _ = timed(lambda: kbuild(force=True))
            rows.append(("cold (empty ccache)", t))
            del os.environ["CCACHE_DIR"]
    subprocess.run(["make", "-s", "-C", str(src), f"O={bdir}", "clean"], check=True)
    t, _ = timed(lambda: kbuild(force=True))
    rows.append(("warm ccache, after make clean", t))
    t, r = timed(kbuild)
    assert r.cached
    rows.append(("no-op rerun (kpt decides, make not started)", t))
    t, _ = timed(lambda: subprocess.run(["make", "-s", "-C", str(src), f"O={bdir}", "CC=ccache gcc", "-j2",
                                         "bzImage"], check=True))
    rows.append(("no-op plain `make bzImage` for comparison", t))
    victim = src / "drivers/tty/serial/8250/8250_core.c"
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\n/* bench */\n")
        t, _ = timed(kbuild)
        rows.append(("one-file change", t))
    finally:
        victim.write_bytes(original)
        kbuild()
    if (bdir / "drivers/net/xen-netback").is_dir() and list((bdir / "drivers/net/xen-netback").glob("*.ko")):
        nb = src / "drivers/net/xen-netback/interface.c"
        original = nb.read_bytes()
        try:
            nb.write_bytes(original + b"\n/* bench */\n")
            t, _ = timed(lambda: build.build_module(ws, r, "drivers/net/xen-netback"))
            rows.append(("kpt build module drivers/net/xen-netback", t))
        finally:
            nb.write_bytes(original)
    if not args.skip_tuxmake and not args.tuxmake:
        print("tuxmake: not installed; pip install tuxmake (in a venv) and pass --tuxmake PATH to compare")
    if not args.skip_tuxmake and args.tuxmake:
        with tempfile.TemporaryDirectory() as tmp:
            frag = Path(tmp) / "kpt.config"
            frag.write_text(cfg.config_text)
            t, p = timed(lambda: subprocess.run(
                [args.tuxmake, "--runtime", "null", "-C", str(src), "--target-arch", "x86_64", "--kconfig", "tinyconfig",
                 "--kconfig-add", str(frag), "-b", f"{tmp}/b", "-o", f"{tmp}/o", "-j2", "kernel"],
                capture_output=True, text=True))
            rows.append((f"tuxmake cold, same config (exit {p.returncode})", t))
            t, p = timed(lambda: subprocess.run(
                [args.tuxmake, "--runtime", "null", "-C", str(src), "--target-arch", "x86_64", "--kconfig", "tinyconfig",
                 "--kconfig-add", str(frag), "-b", f"{tmp}/b", "-o", f"{tmp}/o2", "-j2", "kernel"],
                capture_output=True, text=True))
            rows.append((f"tuxmake rerun, nothing changed (exit {p.returncode})", t))
    base = dict(rows)
    print(f"profile {args.profile}, build folder {bdir}")
    for name, t in rows:
        extra = ""
        if name.startswith("warm") and "cold (empty ccache)" in base:
            extra = f"   cold/warm = {base['cold (empty ccache)'] / t:.1f}x"
        if name.startswith("no-op rerun"):
            plain = base.get("no-op plain `make bzImage` for comparison")
            extra = f"   plain make/kpt = {plain / t:.1f}x" if plain else ""
        if name.startswith("tuxmake rerun"):
            extra = f"   tuxmake/kpt no-op = {t / base['no-op rerun (kpt decides, make not started)']:.1f}x"
        print(f"{name:48} {t:8.1f} s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
