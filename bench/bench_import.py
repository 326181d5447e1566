#!/usr/bin/env python3
"""Import of linux-source-6.1: kpt's fast-import stream against the plain way.

The plain way is what a developer types: `tar x`, drop Debian's ignore-all
block from .gitignore (else `git add -A` adds nothing), `git init`,
`git add -A`, `git commit`. Both run here, in this process's machine, on the
same tarball; the figures and the ratio are printed. A checkout of kpt's
import (what the plain way gets for free) and a no-op re-import are timed too.

    .venv/bin/python bench/bench_import.py [--tree linux] [--second 6.1.192-2]
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

from kpatch_tool import trees, workspace  # noqa: E402


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def plain(tarball: Path, work: Path) -> float:
    def go():
        subprocess.run(["tar", "xf", str(tarball), "-C", str(work)], check=True)
        top = next(work.iterdir())
        gi = top / ".gitignore"
        gi.write_bytes(trees.neutralise_debian_gitignore(gi.read_bytes()))
        subprocess.run(["git", "init", "-q", str(top)], check=True)
        subprocess.run(["git", "-C", str(top), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(top), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "import"], check=True)
    return timed(go)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default="linux", help="a debian: tree of the project's kpt.toml (its pinned version)")
    ap.add_argument("--second", default=None, help="another version, imported after the first (accumulating import)")
    args = ap.parse_args()
    project = workspace.load(Path(__file__).resolve().parent.parent)
    spec = project.tree(args.tree)
    package = spec.source.split(":", 1)[1]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        tmp = Path(tmp)
        (tmp / "ws").mkdir()
        (tmp / "ws/kpt.toml").write_text(f'cache_dir = "{tmp}/cache"\n[trees.linux]\nsource = "{spec.source}"\n'
                                         f'version = "{spec.version}"\n')
        ws = workspace.load(tmp / "ws")
        # Both sides start from the downloaded .deb: the download is not what is compared.
        deb = trees.archive(ws, "linux").fetch_deb(package, spec.version, ws.cache_dir / "debian" / "pool").path
        tarball = trees._tarball_from_deb(deb, package, tmp)
        subprocess.run(["sync"])
        t_kpt = timed(lambda: trees.import_tree(ws, "linux"))
        t_noop = timed(lambda: trees.import_tree(ws, "linux"))
        t_co = timed(lambda: trees.checkout(ws, "linux"))
        t_second = timed(lambda: trees.import_version(ws, "linux", args.second)) if args.second else None
        shutil.rmtree(tmp / "cache")
        subprocess.run(["sync"])
        (tmp / "plain").mkdir()
        t_plain = plain(tarball, tmp / "plain")
        size = tarball.stat().st_size
    print(f"tarball                      {package} {spec.version} ({size / 2**20:.0f} MiB)")
    print(f"plain (tar x + git add + commit) {t_plain:7.1f} s")
    print(f"kpt tree import (fast-import)    {t_kpt:7.1f} s   ratio plain/kpt = {t_plain / t_kpt:.2f}x")
    print(f"kpt import + base checkout       {t_kpt + t_co:7.1f} s   ratio plain/(kpt+checkout) = {t_plain / (t_kpt + t_co):.2f}x")
    print(f"kpt no-op re-import              {t_noop:7.2f} s")
    if t_second is not None:
        print(f"kpt import of {args.second} beside it  {t_second:7.1f} s (download included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
