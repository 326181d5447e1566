#!/usr/bin/env python3
"""Debian's own linux series: kpt's apply against `dpkg-source -x`.

Both start from the same downloaded source package (.dsc, orig and debian
tarballs in kpt's cache; not timed). dpkg-source -x unpacks the orig tarball and
applies debian/patches with patch(1); kpt applies the same series, imported by
`kpt series import --debian-src`, on the orig tree it imported (a git worktree
of `upstream/UPSTREAM`, then git am). Timed here, in a workspace and cache of
the bench's own (the apt state is the project cache's; the source files are
hard-linked from it when they are there):

  - kpt series import --debian-src (one-time: dpkg-source -x and orig imports, series)
  - kpt apply (cold: a new worktree of the orig tree + git am of every patch)
  - kpt check-apply of the series on the orig tree (in an index, no checkout)
  - dpkg-source -x, and dpkg-source -x --skip-patches (unpack only: the difference is patch(1)'s part)

Both trees are compared byte for byte (debian/ and .pc/ aside) before the
figures are printed.

    .venv/bin/python bench/bench_debian_src.py [--package linux] [--version 6.1.176-1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kpatch_tool import apply as applymod  # noqa: E402
from kpatch_tool import checkapply, debsrc, trees, workspace  # noqa: E402
from test_debsrc import _real_ws, compare_trees  # noqa: E402  (the tests' seeded workspace and tree compare)
from bench_build import timed  # noqa: E402  (same folder: (seconds, result) of one call)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", default="linux")
    ap.add_argument("--version", default=None,
                    help="default: what `kpt series import --debian-src PACKAGE` picks (kpt.toml's pin)")
    args = ap.parse_args()
    project = workspace.load(ROOT)
    version = args.version or debsrc.default_version(project, args.package, args.package)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        tmp = Path(tmp)
        ws = _real_ws(tmp, args.package)
        os.environ["KPT_OUT"] = str(tmp / "out")
        os.chdir(ws.root)
        # The download is not what is compared: fetch first, untimed.
        spec = f"{args.package}={version}"
        pkg, ver = debsrc.parse_spec(spec)
        name, _ = debsrc.pick_tree(ws, pkg, ver, None)
        t_import, (series, res, src) = timed(lambda: debsrc.import_series(ws, spec))
        ws = workspace.load(ws.root)
        subprocess.run(["sync"])
        t_apply, applied = timed(lambda: applymod.apply_series(ws, series.name, force=True))
        t_check, _ = timed(lambda: checkapply.check_apply(ws, series.name, [f"{src.tree}={src.orig['tag']}"]))
        subprocess.run(["sync"])
        t_dpkg, _ = timed(lambda: subprocess.run(["dpkg-source", "--no-check", "-x", str(src.dsc), str(tmp / "x")],
                                                 cwd=tmp, check=True, capture_output=True))
        t_unpack, _ = timed(lambda: subprocess.run(["dpkg-source", "--no-check", "--skip-patches", "-x",
                                                    str(src.dsc), str(tmp / "u")], cwd=tmp, check=True,
                                                   capture_output=True))
        diff = compare_trees(applied.worktree, tmp / "x")
        same = debsrc.tree_differences(trees.get(ws, src.tree).repo, applied.head_commit, src.patched) == []
        files = sum(len(f) for _, _, f in os.walk(tmp / "u"))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"source package                     {src.package} {src.version} ({src.order_file}, "
          f"{src.patches} patches, {files} files, tree {name})")
    print(f"equal to dpkg-source -x            {'yes' if not diff and same else 'NO: ' + ', '.join(diff[:5])}")
    print(f"kpt series import --debian-src     {t_import:7.1f} s  (one-time: both imports and the series)")
    print(f"kpt apply (worktree + git am)      {t_apply:7.1f} s")
    print(f"kpt check-apply (index only)       {t_check:7.1f} s")
    print(f"dpkg-source -x                     {t_dpkg:7.1f} s   ratio kpt apply / dpkg-source -x = "
          f"{t_apply / t_dpkg:.2f}x")
    print(f"dpkg-source -x --skip-patches      {t_unpack:7.1f} s   (patch(1)'s part: {t_dpkg - t_unpack:.1f} s)")
    return 0 if not diff and same else 1


if __name__ == "__main__":
    sys.exit(main())
