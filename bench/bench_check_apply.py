#!/usr/bin/env python3
"""Benchmark: `kpt check-apply` of a 20-patch series on 5 bases of the Linux tree,
against the plain way (a `git worktree add` + `git am` per base), in one run.

Everything happens in a scratch `git clone --shared` of the imported tree
(~/.cache/kpt/trees/linux, branch `import`): the 20 patches and the 5 bases are
made there with plumbing, so the real tree is never written to.

    python bench/bench_check_apply.py [--patches 20] [--bases 5] [--keep]

Prints both times and the ratio (target: >= 10x).
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

from kpatch_tool import checkapply, export, trees  # noqa: E402
from kpatch_tool import workspace as wsmod  # noqa: E402

ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
       "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
       "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
       "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args, env=None, input=None) -> str:
    res = subprocess.run(["git", "--git-dir", str(repo), *args], env={**ENV, **(env or {})},
                         input=input, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"git {' '.join(args[:3])} failed: {res.stderr.strip()}")
    return res.stdout


def commit_edits(repo: Path, parent: str, edits: dict[str, callable], msg: str) -> str:
    """A commit on parent with each file rewritten by its edit function (no checkout)."""
    with tempfile.TemporaryDirectory() as d:
        env = {"GIT_INDEX_FILE": str(Path(d) / "index")}
        git(repo, "read-tree", parent, env=env)
        for path, edit in edits.items():
            text = git(repo, "cat-file", "blob", f"{parent}:{path}")
            blob = git(repo, "hash-object", "-w", "--stdin", input=edit(text)).strip()
            git(repo, "update-index", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git(repo, "write-tree", env=env).strip()
    return git(repo, "commit-tree", tree, "-p", parent, "-m", msg).strip()


def insert_at(line: int, text: str):
    def edit(src: str) -> str:
        lines = src.splitlines(True)
        at = min(line, len(lines))
        return "".join(lines[:at] + [text] + lines[at:])
    return edit


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=20)
    ap.add_argument("--bases", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    project = wsmod.load(Path(__file__).resolve().parent.parent)
    linux = trees.get(project, "linux")
    if linux.state != "imported":
        raise SystemExit("the linux tree is not imported: run `kpt tree import linux` first")
    scratch = Path(tempfile.mkdtemp(prefix="kpt-bench-"))
    try:
        repo = scratch / "linux.git"
        t0 = time.monotonic()
        subprocess.run(["git", "clone", "-q", "--bare", "--shared", str(linux.repo), str(repo)],
                       check=True, env=ENV)
        base0 = git(repo, "rev-parse", "import^{commit}").strip()
        files = [f for f in git(repo, "ls-tree", "-r", "--name-only", base0, "drivers/net/ethernet/intel/").split()
                 if f.endswith(".c")][: args.patches]
        tip = base0
        for i, f in enumerate(files, 1):
            tip = commit_edits(repo, tip, {f: insert_at(40, f"/* bench patch {i} */\n")},
                               f"bench: patch {i} touches {f}\n\nA line for the benchmark.\n")
        git(repo, "branch", "-f", "stack", tip)
        others = [f for f in git(repo, "ls-tree", "-r", "--name-only", base0, "Documentation/admin-guide/").split()
                  if f.endswith(".rst")]
        bases = []
        for b in range(1, args.bases + 1):
            edits = {others[b]: insert_at(3, f"bench base {b}\n")}
            if b % 2 == 0:  # some bases shift a patched file: hunks found at an offset
                edits[files[b]] = insert_at(5, "/* upstream moved things */\n/* down */\n")
            c = commit_edits(repo, base0, edits, f"base {b}")
            git(repo, "branch", "-f", f"base{b}", c)
            bases.append(f"base{b}")
        root = scratch / "ws"
        (root / "patches").mkdir(parents=True)
        (root / "kpt.toml").write_text(f'cache_dir = "{scratch / "cache"}"\n[trees.linux]\nsource = "{repo}"\n')
        ws = wsmod.load(root)
        series, _ = export.import_stack(ws, "import..stack", "linux", name="bench")
        patches = [p.path for p in series.trees["linux"].patches]
        print(f"setup: {len(patches)} patches, {len(bases)} bases in {time.monotonic() - t0:.1f}s ({scratch})")

        t0 = time.monotonic()
        reports = checkapply.check_apply(ws, "bench", bases)
        kpt_s = time.monotonic() - t0
        for r in reports:
            counts = {}
            for pc in r.results:
                counts[pc.status] = counts.get(pc.status, 0) + 1
            print(f"  kpt {r.base}: {counts} in {r.seconds:.2f}s")

        t0 = time.monotonic()
        for b in bases:
            tb = time.monotonic()
            wt = scratch / f"wt-{b}"
            subprocess.run(["git", "--git-dir", str(repo), "worktree", "add", "-q", "--detach", str(wt), b],
                           check=True, env=ENV)
            am = subprocess.run(["git", "am", "-q", *map(str, patches)], cwd=wt, env=ENV,
                                capture_output=True, text=True)
            ok = am.returncode == 0
            subprocess.run(["git", "--git-dir", str(repo), "worktree", "remove", "--force", str(wt)],
                           check=True, env=ENV)
            print(f"  plain {b}: worktree add + git am {'ok' if ok else 'FAILED'} in {time.monotonic() - tb:.2f}s")
        plain_s = time.monotonic() - t0

        print(f"check-apply (kpt):             {kpt_s:8.2f} s")
        print(f"worktree add + git am (plain): {plain_s:8.2f} s")
        print(f"ratio:                         {plain_s / kpt_s:8.1f}x (target >= 10x)")
        print(f"load average: {os.getloadavg()[0]:.1f} (2 cores; other work on the machine skews both sides)")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
