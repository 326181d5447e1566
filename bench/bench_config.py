#!/usr/bin/env python3
"""kpt config vs the kernel's merge_config.sh + make olddefconfig, same fragments, same run.

For each shipped profile (and one broken variant: xen-dom0 without acpi.config)
it times
  kpt (cold)   `kpt config P --no-cross-check` in a fresh process (parses Kconfig)
  kpt (warm)   kconfig.evaluate() again in this process (parse cached)
  kbuild cold  `make tinyconfig` + `merge_config.sh -m` + `make olddefconfig`
               in a fresh O= folder (builds scripts/kconfig/conf, as a CI job would)
  kbuild warm  the same in an O= folder whose conf is already built
and lists what merge_config.sh let through silently: requested values that are
not in its final .config although every step exited 0. Both .config files are
compared (they must be equal).

Usage: .venv/bin/python bench/bench_config.py [--srctree PATH] [--tree linux]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kpatch_tool import kconfig, trees, workspace  # noqa: E402


def timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def run(argv, cwd=None, env=None):
    res = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    return res


def kbuild_route(src: Path, base: str, frags: list[Path], obj: Path):
    """make <base>; merge_config.sh -m .config frags; make olddefconfig (all must exit 0)."""
    obj.mkdir(exist_ok=True)
    env = {**os.environ, "ARCH": "x86"}
    rcs = []
    r = run(["make", "-s", "-C", src, f"O={obj}", "ARCH=x86", base], env=env)
    rcs.append(r.returncode)
    r = run(["sh", src / "scripts/kconfig/merge_config.sh", "-m", "-O", obj, obj / ".config", *frags],
            cwd=obj, env=env)
    rcs.append(r.returncode)
    r = run(["make", "-s", "-C", src, f"O={obj}", "ARCH=x86", "olddefconfig"], env=env)
    rcs.append(r.returncode)
    return (obj / ".config").read_text(), rcs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--srctree")
    ap.add_argument("--tree", default="linux")
    args = ap.parse_args()
    ws = workspace.load(ROOT)
    src = Path(args.srctree) if args.srctree else trees.checkout(ws, args.tree)
    kpt = ROOT / ".venv" / "bin" / "kpt"

    cases = []
    for name in kconfig.load_profiles(ws):
        base, frags = kconfig.profile_fragments(ws, name)
        cases.append((name, name, base, frags))
    base, frags = kconfig.profile_fragments(ws, "xen-dom0")
    cases.append(("xen-dom0 without acpi.config", None, base, [f for f in frags if f.name != "acpi.config"]))

    print(f"tree {src}  (kconfiglib + shim vs scripts/kconfig, ARCH=x86)")
    print(f"{'case':30} {'kpt cold':>9} {'kpt warm':>9} {'kb cold':>8} {'kb warm':>8} {'cold ratio':>10} {'warm ratio':>10}  same .config")
    warm_obj = Path(tempfile.mkdtemp(prefix="kpt-bench-obj-"))
    kbuild_route(src, "tinyconfig", [], warm_obj)  # builds conf once
    silent_report = []
    kconfig.load_tree(src)  # the warm column measures evaluation only
    for label, profile, base, frags in cases:
        with tempfile.TemporaryDirectory(prefix="kpt-bench-") as tmp:
            tmp = Path(tmp)
            out = tmp / "kpt.config"
            if profile:
                argv = [kpt, "-w", ROOT, "config", profile, "--srctree", src, "-o", out, "--no-cross-check"]
            else:
                argv = [kpt, "-w", ROOT, "config", "--base", base, "--srctree", src, "-o", out, "--no-cross-check"]
                for f in frags:
                    argv += ["-f", f]
            res, t_cold = timed(lambda: run(argv))
            result, t_warm = timed(lambda: kconfig.evaluate(src, base, frags))
            (theirs, rcs), t_kb = timed(lambda: kbuild_route(src, base, frags, tmp / "o"))
            (_, _), t_kbw = timed(lambda: kbuild_route(src, base, frags, warm_obj))
        same = kconfig.normalise(theirs) == kconfig.normalise(result.config_text)
        print(f"{label:30} {t_cold:8.2f}s {t_warm:8.2f}s {t_kb:7.2f}s {t_kbw:7.2f}s {t_kb / t_cold:9.1f}x {t_kbw / t_warm:9.1f}x  "
              f"{'yes' if same else 'NO'}   (kpt exit {res.returncode}, kbuild exits {rcs})")
        values = kconfig.read_values(theirs)
        requested = {}
        for f in frags:
            for a in kconfig.parse_fragment(f):
                requested[a.symbol] = a
        dropped = []
        for sym, a in requested.items():
            got = values.get(sym, "n" if a.value == "n" else None)
            want = f'"{a.value}"' if a.quoted else a.value
            if got != want and not (want == "n" and got is None):
                dropped.append(f"CONFIG_{sym}: requested {want}, got {got or '(absent)'}  [{a.where}]")
        if dropped:
            silent_report.append((label, rcs, dropped, [p.symbol for p in result.problems], res.returncode))

    shutil.rmtree(warm_obj, ignore_errors=True)
    print("ratio = kbuild time / kpt time (cold: fresh processes and O= folders; warm: parse and conf reused)")
    print()
    if not silent_report:
        print("merge_config.sh + olddefconfig kept every requested value in every case.")
    for label, rcs, dropped, caught, rc in silent_report:
        print(f"{label}: merge_config.sh route exited {rcs} but dropped {len(dropped)} requested value(s):")
        for d in dropped:
            print(f"    {d}")
        print(f"  kpt config exited {rc} and reported: {', '.join(caught) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
