"""The composer: trees -> apply -> config -> build -> image -> boot -> report.

Each stage is a function of its own module; this one chains them for `kpt ci`
and for the commands that need an earlier stage's output (e.g. `kpt build`
needs a config). Nothing here knows how a stage works inside.
"""

from __future__ import annotations

from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool import trees
from kpatch_tool.workspace import Workspace


def source_for(ws: Workspace, tree: str, *, series: str | None = None, worktree: Path | None = None,
               onto: str | None = None, progress=None) -> tuple[Path, str | None]:
    """The source folder to configure and build: a series' worktree, a given one, or the base.

    Returns (srctree, base commit of the series or None).
    """
    if worktree:
        wt = Path(worktree)
        if not (wt / "Makefile").exists():
            from kpatch_tool.errors import UsageError

            raise UsageError(f"{wt}: worktree not found or not a kernel tree (did it vanish?)")
        return wt, None
    if series:
        from kpatch_tool import apply as applymod

        res = applymod.apply_series(ws, series, tree=tree, onto=onto, progress=progress)
        return Path(res.worktree), res.base_commit
    return trees.checkout(ws, tree, onto, progress=progress), None


def config_for(ws: Workspace, srctree: Path, profile: str, *, series: tuple[str, ...] = (),
               fragments: tuple[Path, ...] = ()):
    from kpatch_tool import kconfig

    return kconfig.config_for_profile(ws, srctree, profile, extra_fragments=tuple(fragments), series=tuple(series))


def build_profile(ws: Workspace, tree: str, profile: str, *, srctree: Path | None = None,
                  series: tuple[str, ...] = (), fragments: tuple[Path, ...] = (), wrapper: str | None = "ccache",
                  jobs: int | None = None, progress=None, force: bool = False) -> buildmod.BuildResult:
    """Config + build of one profile on one source folder."""
    if srctree is None:
        srctree, _ = source_for(ws, tree, progress=progress)
    cfg = config_for(ws, srctree, profile, series=series, fragments=fragments)
    return buildmod.build_linux(ws, srctree=srctree, tree=tree, profile=profile, config_text=cfg.config_text,
                                config_hash=cfg.config_hash, wrapper=wrapper, jobs=jobs, progress=progress,
                                force=force)
