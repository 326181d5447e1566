#!/usr/bin/env python3
"""Boot-to-result time: `kpt boot` (guest mode, TCG) against virtme-ng on the same bzImage.

Measures, in one run on one machine:
  - kpt: initramfs build (cold, then cached) and boot → KTAP verdict → QEMU exit, N runs;
  - virtme-ng: `vng --disable-kvm --force-9p --run BUILD -e "uname -r"`, N runs, if vng is
    installed (pip install virtme-ng; FACTS: it needs its venv's bin/ on PATH and --disable-kvm here).
virtme-ng shares the host's root over 9p, so it can only boot a kernel with 9P_FS and
NET_9P_VIRTIO built in; when the kernel lacks them vng's init fails, and the bench reports
that and the time vng took to reach its init, a lower bound of its boot-to-result time.
Prints both times and the ratio (target: kpt ≤ 1.5x virtme-ng).

Usage: bench/bench_boot.py [--kernel-build DIR] [--runs N] [--vng PATH] [--vng-build DIR]
Note: vng writes .virtme_mods/ into the build folder it runs.

Nested (xen+domU) boots, phase by phase, against the unoptimised code:
    bench/bench_boot.py --nested [--runs N] [--baseline REF] [--case NAME ...]
runs the base kernel's `kpt ci --base-only --mode xen+domU` and the default `kpt ci`
(--rerun-boot: the kernels and images are cached, the boot is not), N times each, with
this checkout's code and with REF's (default 21c924a, before the phases and the speed-ups;
a temporary git worktree), alternating the two so that both see the same load. REF's runs
take REF's series checks too (its patches/*/series.toml, put in place for each of its runs
and put back after), so the default run's ratio is the whole unoptimised path's. Prints the
phase table (medians) of each, the boot stage and whole-run times, the ratio, and the
load average (`uptime`) before and after: the machine is shared.
`--case virtio-xenbus` / `--case vring-dma-api` time those series' boots (this code only:
REF predates their Xen part and checks) against the 60 s target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kpatch_tool import boot, image, proc, qemu  # noqa: E402
from kpatch_tool import workspace as wsmod  # noqa: E402

DEFAULT_BUILD = os.environ.get("KPT_BENCH_BUILD")  # default: kpt's own (cached) build of the guest profile


def bench_kpt(ws, build: Path, runs: int, tmp: Path) -> dict:
    release = image.kernel_release(build)
    smoke = [{"series": "bench", "name": "uname", "run": "uname -r", "expect": release}]
    cache_ws = wsmod.Workspace(root=ws.root, trees=ws.trees, cache_dir=tmp / "cache", data=ws.data)
    t0 = time.monotonic()
    initrd = image.build_initramfs(cache_ws, kernel_release=release, modules_dir=None, smoke=smoke, mode="guest")
    cold = time.monotonic() - t0
    t0 = time.monotonic()
    image.build_initramfs(cache_ws, kernel_release=release, modules_dir=None, smoke=smoke, mode="guest")
    warm = time.monotonic() - t0
    times, done = [], []
    for i in range(runs):
        r = boot.boot(cache_ws, mode="guest", kernel=build / "arch/x86/boot/bzImage", initrd=initrd,
                      run_dir=tmp / f"kpt-{i}", timeout=120)
        if r.verdict != "pass":
            raise SystemExit(f"kpt boot {i}: {r.verdict}: {r.message} (see {r.console_log})")
        times.append(r.duration)
        done.append(r.outcome.done_after or r.duration)
    return {"image_cold": cold, "image_warm": warm, "boot": times, "ktap_done": done,
            "accel": "kvm" if qemu.kvm()[0] else "tcg"}


def bench_vng(vng: str, build: Path, runs: int, tmp: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(vng).parent}:{env.get('PATH', '')}:/usr/sbin:/sbin"
    release = image.kernel_release(build)
    times, failure, init_at = [], None, []
    for i in range(runs):
        seen: dict[str, float] = {}
        t0 = time.monotonic()

        def on_line(line: str, t0=t0, seen=seen):
            if "as init process" in line and "init" not in seen:
                seen["init"] = time.monotonic() - t0
            if "Kernel panic" in line and "panic" not in seen:
                seen["panic"] = time.monotonic() - t0
                seen["panic_line"] = line.strip()

        res = proc.stream([vng, "--disable-kvm", "--force-9p", "--verbose", "--run", str(build), "-e", "uname -r"],
                          on_line=on_line, env=env, timeout=180, log=tmp / f"vng-{i}.log")
        wall = time.monotonic() - t0
        if res.ok and release in res.stdout and "panic" not in seen:
            times.append(wall)
        else:
            failure = seen.get("panic_line") or f"exit {res.returncode}{' (timed out)' if res.timed_out else ''}"
            if "init" in seen:
                init_at.append(seen["init"])
            if "init" not in seen:
                break  # it will not get further on another try
    return {"boot": times, "failure": failure, "init_at": init_at}


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"median {statistics.median(xs):.2f}s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


BASELINE = "21c924a"  # main before issue 24: gzip dom0 rootfs, no phases
NESTED_CASES = {"base xen+domU": ["--base-only", "--mode", "xen+domU"], "default kpt ci": []}
# The virtio series boot Xen and its tools from the tree and have checks REF never had
# (save/restore, the backend closed and reopened): timed alone, against their target.
VIRTIO_CASES = {"virtio-xenbus": ["virtio-xenbus"], "vring-dma-api": ["vring-dma-api"]}
TARGETS = {"base xen+domU": 25.0, "default kpt ci": 35.0, "virtio-xenbus": 60.0, "vring-dma-api": 60.0}
ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def kpt_ci(code: Path, args: list[str], out: Path) -> dict:
    """One `kpt ci ... --rerun-boot` with the code in `code`; its boot stage, wall time and phases."""
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(code), KPT_OUT=str(out))
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    t0 = time.monotonic()
    # -P: without it `python -m` puts the cwd (this checkout) before PYTHONPATH on sys.path,
    # and REF's runs would run this code.
    res = subprocess.run([sys.executable, "-P", "-m", "kpatch_tool.cli", "ci", *args, "--rerun-boot"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    run = next(iter(set(out.iterdir()) - before - {out / ".kpt-ci.lock"}), None)
    if run is None or not (run / "manifest.json").is_file():
        raise SystemExit(f"kpt ci {' '.join(args)} ({code}) left no run folder: {res.stderr[-500:]}")
    m = json.loads((run / "manifest.json").read_text())
    boot = next((s for s in m["stages"] if s["name"] == "boot"), None)
    phases = json.loads((run / "results.json").read_text()).get("phases", []) if (run / "results.json").is_file() else []
    return {"exit": res.returncode, "wall": wall, "boot": boot["end"] - boot["start"] if boot else None,
            "phases": phases, "run": run}


def baseline_checkout(ref: str, tmp: Path) -> Path:
    import subprocess

    dest = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), ref], check=True,
                   capture_output=True)
    return dest


class baseline_checks:
    """REF's series.toml files in this workspace's patches/ for the length of one run."""

    def __init__(self, old: Path):
        self.files = [(ROOT / f.relative_to(old), f.read_bytes()) for f in sorted(old.glob("patches/*/series.toml"))
                      if (ROOT / f.relative_to(old)).is_file()]
        self.saved: list[tuple[Path, bytes]] = []

    def __enter__(self):
        for path, data in self.files:
            self.saved.append((path, path.read_bytes()))
            path.write_bytes(data)

    def __exit__(self, *exc):
        for path, data in self.saved:
            path.write_bytes(data)
        self.saved = []


def bench_nested(runs: int, ref: str, cases: list[str]) -> int:
    import subprocess

    print(f"load before: {load()}")
    unknown = [c for c in cases if c not in NESTED_CASES and c not in VIRTIO_CASES]
    if unknown:
        raise SystemExit(f"unknown case {unknown[0]!r}; cases: {', '.join([*NESTED_CASES, *VIRTIO_CASES])}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kpt-bench-nested-") as t:
        tmp = Path(t)
        old = baseline_checkout(ref, tmp)
        try:
            for case, args in NESTED_CASES.items():
                if cases and case not in cases:
                    continue
                new_runs, old_runs = [], []
                for i in range(runs):  # alternate: both see the same load
                    new_runs.append(kpt_ci(ROOT, args, tmp / "out-new"))
                    with baseline_checks(old):
                        old_runs.append(kpt_ci(old, args, tmp / "out-old"))
                    print(f"  {case} #{i + 1}: boot {secs(new_runs[-1]['boot'])} (exit {new_runs[-1]['exit']}), "
                          f"unoptimised {secs(old_runs[-1]['boot'])} (exit {old_runs[-1]['exit']}); load {load()}")
                failed += sum(r["exit"] != 0 for r in new_runs + old_runs)
                if any(r["boot"] is None for r in new_runs + old_runs):
                    print(f"{case}: a run stopped before its boot (see above); no ratio\n")
                    continue
                print_phases(case, new_runs, old_runs)
                nb = statistics.median(r["boot"] for r in new_runs)
                ob = statistics.median(r["boot"] for r in old_runs)
                nw = statistics.median(r["wall"] for r in new_runs)
                ow = statistics.median(r["wall"] for r in old_runs)
                print(f"{case}: boot stage {nb:.1f}s vs unoptimised {ob:.1f}s ({nb / ob:.2f}x); "
                      f"whole kpt ci {nw:.1f}s vs {ow:.1f}s ({nw / ow:.2f}x); target {TARGETS[case]:.0f}s\n")
            for case, args in VIRTIO_CASES.items():
                if case not in cases:
                    continue
                new_runs = []
                for i in range(runs):
                    new_runs.append(kpt_ci(ROOT, args, tmp / "out-new"))
                    print(f"  {case} #{i + 1}: boot {secs(new_runs[-1]['boot'])} (exit {new_runs[-1]['exit']}); "
                          f"load {load()}")
                failed += sum(r["exit"] != 0 for r in new_runs)
                if any(r["boot"] is None for r in new_runs):
                    print(f"{case}: a run stopped before its boot (see above)\n")
                    continue
                print_phases(case, new_runs, [])
                nb = statistics.median(r["boot"] for r in new_runs)
                print(f"{case}: boot stage {nb:.1f}s; target {TARGETS[case]:.0f}s\n")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    print(f"load after: {load()}")
    return 1 if failed else 0


def secs(x: float | None) -> str:
    return "no boot" if x is None else f"{x:.1f}s"


def print_phases(case: str, runs: list[dict], old_runs: list[dict]) -> None:
    """The phase table, this code's runs beside the unoptimised code's (medians)."""
    names: list[str] = []
    for r in runs + old_runs:
        names += [p["name"] for p in r["phases"] if p["name"] not in names]

    def med(rs: list[dict], name: str, key: str) -> str:
        xs = [p[key] for r in rs for p in r["phases"] if p["name"] == name]
        return f"{statistics.median(xs):6.1f}s" if xs else "      -"

    print(f"{case}: phases (median of {len(runs)}; seconds each took, when it ended; then the unoptimised code's)")
    for name in names:
        print(f"  {name:18} {med(runs, name, 'seconds')}  ends at {med(runs, name, 'end')}"
              f"   | unoptimised {med(old_runs, name, 'seconds')}  ends at {med(old_runs, name, 'end')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nested", action="store_true", help="xen+domU boots, phase by phase, against --baseline")
    ap.add_argument("--baseline", default=BASELINE, help="git ref of the unoptimised code (default: %(default)s)")
    ap.add_argument("--kernel-build", type=Path, default=Path(DEFAULT_BUILD) if DEFAULT_BUILD else None)
    ap.add_argument("--vng-build", type=Path, default=None, help="build folder for vng (default: the same)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--case", action="append", default=[],
                    help="with --nested: only this case (repeatable; default: base and default job; "
                         "the virtio series only when named: " + ", ".join(VIRTIO_CASES) + ")")
    ap.add_argument("--vng", default=shutil.which("vng"), help="virtme-ng's vng (default: the one on PATH)")
    args = ap.parse_args()
    if args.nested:
        return bench_nested(args.runs, args.baseline, args.case)
    ws = wsmod.load()
    if args.kernel_build is None:
        from kpatch_tool import pipeline

        # kpt's own build of the guest profile: a no-op when it is there already.
        args.kernel_build = pipeline.build_profile(ws, "linux", "guest", progress=print).build_dir
    build = args.kernel_build.resolve()
    if not (build / "arch/x86/boot/bzImage").is_file():
        raise SystemExit(f"{build}: no arch/x86/boot/bzImage (build the guest profile first)")
    with tempfile.TemporaryDirectory(prefix="kpt-bench-") as t:
        tmp = Path(t)
        k = bench_kpt(ws, build, args.runs, tmp)
        print(f"kernel: {build / 'arch/x86/boot/bzImage'} ({image.kernel_release(build)}), accel {k['accel']}")
        print(f"kpt image initramfs: cold {k['image_cold']:.2f}s, cached {k['image_warm']:.3f}s")
        print(f"kpt boot (launch → verdict → QEMU exit): {fmt(k['boot'])}")
        print(f"kpt boot (launch → last KTAP result):    {fmt(k['ktap_done'])}")
        ours = statistics.median(k["boot"])
        if not args.vng or not Path(args.vng).is_file():
            print(f"virtme-ng: not installed ({args.vng}); pip install virtme-ng to compare")
            return 0
        v = bench_vng(args.vng, (args.vng_build or build).resolve(), args.runs, tmp)
        if v["boot"]:
            theirs = statistics.median(v["boot"])
            print(f"vng --run -e 'uname -r' (launch → exit):  {fmt(v['boot'])}")
            print(f"ratio kpt/vng: {ours / theirs:.2f}x (target ≤ 1.5x)")
        else:
            print(f"virtme-ng could not boot this kernel: {v['failure']}")
            print("  (vng mounts the host's root over 9p: the kernel needs 9P_FS, NET_9P_VIRTIO, VIRTIO_PCI)")
            if v["init_at"]:
                lower = statistics.median(v["init_at"])
                print(f"vng launch → its init started (lower bound of its boot-to-result): {fmt(v['init_at'])}")
                print(f"ratio kpt (full result) / vng (only reaching init): {ours / lower:.2f}x (target ≤ 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
