"""`kpt cache clean`: drop what kpt cached, never what a user made.

Without --all only results are dropped (boot verdicts, evaluated configs, images,
build stamps): the next run recomputes them, make and ccache keep the rest
warm. With --all the trees, downloads, worktrees and build folders go too,
except a worktree holding uncommitted edits or a stopped `git am` (someone's
conflict resolution in progress): those are kept and named.
Only kpt's own sub-folders of the cache folder are touched, never the folder
itself: `cache_dir` may be pointed anywhere.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.workspace import Workspace

RESULTS = ("boots", "configs", "config-checks", "kconfig-check", "images")
EVERYTHING = RESULTS + ("builds", "worktrees", "trees", "apt", "debian")
BUILD_STAMP = "kpt-build.json"


@dataclass
class CleanResult:
    removed: list[Path] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)
    freed: int = 0


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for f in p.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            pass
    return total


def _busy(wt: Path) -> str | None:
    """Why a worktree must stay: uncommitted edits or a stopped git am."""
    if not (wt / ".git").exists():
        return None
    st = proc.run(["git", "-C", str(wt), "status", "--porcelain", "--untracked-files=no"], timeout=300)
    if st.ok and st.stdout.strip():
        return "uncommitted changes"
    from kpatch_tool.apply import am_in_progress

    if am_in_progress(wt):
        return "a stopped `git am` (kpt apply --continue / --abort)"
    return None


def clean(ws: Workspace, *, everything: bool = False, dry_run: bool = False) -> CleanResult:
    res = CleanResult()
    root = ws.cache_dir
    if not root.is_dir():
        return res

    def drop(p: Path) -> None:
        res.freed += _size(p)
        res.removed.append(p)
        if not dry_run:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    for name in RESULTS:
        if (root / name).exists():
            drop(root / name)
    # Build stamps: the next build runs make (warm) instead of trusting the folder.
    for stamp in [*root.glob(f"builds/*/*/{BUILD_STAMP}"), *root.glob(f"worktrees/*/*/.kpt-build-*/{BUILD_STAMP}")]:
        if not everything:
            drop(stamp)
    if not everything:
        return res
    kept_wts = set()
    for wt in sorted(root.glob("worktrees/*/*")):
        if wt.is_dir():
            why = _busy(wt)
            if why:
                res.kept.append((wt, why))
                kept_wts.add(wt)
    for name in EVERYTHING:
        top = root / name
        if not top.exists() or name in RESULTS:
            continue
        if name == "worktrees" and kept_wts:
            for tree_dir in top.iterdir():
                for wt in tree_dir.iterdir() if tree_dir.is_dir() else [tree_dir]:
                    if wt not in kept_wts and not any(wt == k.with_suffix(".lock") for k in kept_wts):
                        drop(wt)
            continue
        if name == "trees" and kept_wts:
            # A kept worktree needs its repository.
            needed = {k.parent.name for k in kept_wts}
            for repo in top.iterdir():
                if repo.name.lstrip(".").split(".lock")[0] not in needed:
                    drop(repo)
            continue
        drop(top)
    return res
