"""The composer: trees -> apply -> config -> build -> image -> boot -> report.

Each stage is a function of its own module; this one chains them for `kpt ci`
and for the commands that need an earlier stage's output (e.g. `kpt build`
needs a config). Nothing here knows how a stage works inside.
"""

from __future__ import annotations

import os
from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool import safefs, trees
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

        res = applymod.apply_series(ws, series, tree=tree, onto=onto, say=progress,
                                    progress=(lambda msg, i, n: progress(f"{msg} ({i}/{n})")) if progress else None)
        return Path(res.worktree), res.base_commit
    return trees.checkout(ws, tree, onto, progress=progress), None


def config_for(ws: Workspace, srctree: Path, profile: str, *, series: tuple[str, ...] = (),
               fragments: tuple[Path, ...] = (), output: Path | None = None, force: bool = False):
    """The profile's configuration for srctree, remembered by its inputs.

    Evaluating means parsing the whole Kconfig tree (~4 s). The result only
    depends on the source (commit + edits), the base, the fragments' bytes,
    our kconfig code and the compiler (Kconfig's $(cc-option,...) and
    CC_VERSION_TEXT ask it), so a rerun with those unchanged reads it back
    instead. Only configurations that validated are remembered.
    """
    import hashlib

    from kpatch_tool import kconfig

    base, frags = kconfig.profile_fragments(ws, profile, series)
    frags = [*frags, *(Path(f) for f in fragments)]
    state = buildmod.source_state(Path(srctree))
    key = None
    if state:
        h = hashlib.sha256(f"{state}\0{base}\0".encode())
        for f in frags:
            h.update(str(f).encode() + b"\0" + (Path(f).read_bytes() if Path(f).is_file() else b"<missing>"))
        if not base.endswith(("tinyconfig", "allnoconfig", "defconfig")) and Path(base).is_file():
            h.update(Path(base).read_bytes())
        for mod in (kconfig.__file__, kconfig.__file__.replace("kconfig.py", "kconfig_compat.py")):
            h.update(Path(mod).read_bytes())
        h.update(buildmod.compiler_id(None).encode())
        key = h.hexdigest()[:24]
        hit = ws.cache_dir / "configs" / f"{key}.config"
        if hit.exists() and not force:
            text = hit.read_text()
            res = kconfig.ConfigResult(config_text=text, config_hash=kconfig.config_hash(text), base=base,
                                       fragments=frags, srctree=Path(srctree))
            res.from_cache = True  # read back, not evaluated: the config stage says "cached"
            if output is not None:
                Path(output).write_text(text)
            return res
    res = kconfig.config_for_profile(ws, srctree, profile, extra_fragments=tuple(fragments), series=tuple(series),
                                     output=output)
    if key:
        hit = ws.cache_dir / "configs" / f"{key}.config"
        hit.parent.mkdir(parents=True, exist_ok=True)
        safefs.replace_file(hit, res.config_text.encode())
    return res


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


# --------------------------------------------------------------------------
# kpt ci: one cell (series x base x mode) from trees to results

import getpass  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

from kpatch_tool import __version__  # noqa: E402
from kpatch_tool import stages as stagesmod  # noqa: E402
from kpatch_tool.errors import KptError  # noqa: E402
from kpatch_tool.progress import Reporter  # noqa: E402
from kpatch_tool.runfolder import STAGES, Manifest, StageRecord, WorkspaceLock, new_run_dir  # noqa: E402,F401

from kpatch_tool.modes import MODES, run_mode  # noqa: E402,F401 (MODES: used by callers)


@dataclass
class CiResult:
    run_id: str
    run_dir: Path
    exit_code: int
    series: str | None
    mode: str
    stages: list[StageRecord] = field(default_factory=list)
    message: str = ""
    failed_stage: str | None = None


def _context(ws: Workspace, series: str | None, mode: str, onto: dict[str, str], profile: str | None,
             timeout: float | None, fragments: tuple[Path, ...], qemu_args: tuple[str, ...], label: str | None,
             rep: Reporter, force: bool, rerun_boot: bool, expect: int = 0,
             checks_from: str | None = None, long_checks: bool = False) -> stagesmod.RunContext:
    """What the run was asked, settled once: command line over series.toml [ci] over mode defaults.

    checks_from (a base run only): the series whose checks, [domU] and [ci] settings the base runs with."""
    m = run_mode(mode)
    if checks_from and series:
        from kpatch_tool.errors import UsageError

        raise UsageError(f"checks from {checks_from} run on the base without a series, not with {series}")
    declared = series_ci_settings(ws, series or checks_from) if series or checks_from else {}
    tree = default_linux_tree(ws, series or checks_from)
    for t in onto:
        if t in ws.trees and ws.trees[t].kind == "linux":
            tree = t
    ws.tree(tree)
    profile = settled_profile(ws, series or checks_from, mode, profile)
    qemu_args = tuple(declared.get("qemu_args", ())) + tuple(qemu_args)
    timeout = timeout or declared.get("timeout") or m.timeout
    what = series or (f"base-checks-{checks_from}" if checks_from else "base")
    run_id, run_dir = new_run_dir(ws, label or f"{what}-{tree}-{mode.replace('+', '-')}")
    (run_dir / "logs").mkdir()
    manifest = Manifest(run_dir, {
        "run_id": run_id, "tool": {"name": "kpatch-tool", "version": __version__},
        "host": {"node": platform.node(), "kernel": platform.release(), "cpus": len(os.sched_getaffinity(0)),
                 "user": getpass.getuser()},
        "inputs": {"series": series, "checks_from": checks_from, "mode": mode, "profile": profile, "tree": tree,
                   "onto": onto, "fragments": [fragment_name(ws, f) for f in fragments],
                   "fragment_sha256": [safefs.sha256_file(f) if Path(f).is_file() else None for f in fragments],
                   "qemu_args": list(qemu_args), "force": force, "expect": expect, "long_checks": long_checks},
        "outputs": {}, "stages": [], "complete": False, "exit_code": None,
    })
    return stagesmod.RunContext(ws=ws, series=series, mode=mode, tree=tree, profile=profile, timeout=timeout,
                                onto=onto, fragments=tuple(fragments), qemu_args=qemu_args, run_dir=run_dir,
                                manifest=manifest, detail=lambda msg, *_: rep.detail(str(msg)), force=force,
                                rerun_boot=rerun_boot, checks_from=checks_from, long_checks=long_checks)


def settled_profile(ws: Workspace, series: str | None, mode: str, profile: str | None) -> str:
    """The profile a run builds: the command line's, else series.toml [ci]'s, else the mode's."""
    declared = series_ci_settings(ws, series) if series else {}
    return profile or declared.get("profile") or run_mode(mode).profile


def fragment_name(ws: Workspace, f: Path) -> str:
    """A fragment as the manifest and emitted commands name it: relative to the workspace when inside it,
    so the same cell run on another runner (another checkout folder) records the same input."""
    p = Path(f).absolute()
    try:
        return str(p.relative_to(ws.root.absolute()))
    except ValueError:
        return str(p)


def _run_stage(c: stagesmod.RunContext, rep: Reporter, result: CiResult, name: str) -> None:
    """One stage, timed and recorded in the manifest and its log, whatever its outcome."""
    rep.stage(name)
    start = time.time()
    log = c.logs / f"{name}.log"
    try:
        status, note = stagesmod.STAGE_FUNCTIONS[name](c)
    except KptError as exc:
        rec = StageRecord(name, "failed", start, time.time(), str(log), exc.message, exc.exit_code)
        with log.open("a") as fh:
            fh.write(f"error: {exc.message}\n{exc.detail or ''}\n")
        result.stages.append(rec)
        c.manifest.data["stages"].append(asdict(rec))
        c.manifest.write()
        rep.done(name, "failed", rec.seconds, exc.message[:80])
        raise
    rec = StageRecord(name, status, start, time.time(), str(log), note)
    with log.open("a") as fh:
        fh.write(f"{name}: {status} in {rec.seconds:.1f}s: {note}\n")
    result.stages.append(rec)
    c.manifest.data["stages"].append(asdict(rec))
    c.manifest.write()
    rep.done(name, status, rec.seconds, note)


def run_ci(ws: Workspace, series: str | None = None, *, mode: str = "guest", onto: dict[str, str] | None = None,
           profile: str | None = None, timeout: float | None = None, reporter: Reporter | None = None,
           rerun_boot: bool = False, label: str | None = None, fragments: tuple[Path, ...] = (),
           qemu_args: tuple[str, ...] = (), force: bool = False, expect: int = 0, stop_after: str | None = None,
           from_artifacts: Path | None = None, checks_from: str | None = None,
           long_checks: bool = False, xen_tree: str | None = None) -> CiResult:
    """Run one cell: trees -> apply -> config -> build [-> qemu] -> image -> boot -> report.

    stop_after="build" ends after the build and exports the kernel into the run
    folder (a CI build job); from_artifacts resumes from such a run folder (a
    boot job): series, base, profile and fragments are the build's, checked by hash.
    checks_from: with no series, the base tree runs that series' checks in their base form.
    long_checks: the long form of the checks that have one (KPT_LONG_CHECKS=1 in their
    environment): what a matrix that measures runs; the default run takes the short form.
    xen_tree: boot the hypervisor and toolstack built from this Xen tree (a series patching
    a Xen tree implies it).
    """
    rep = reporter or Reporter()
    resumed = None
    if from_artifacts is not None:
        from kpatch_tool import artifacts

        resumed = artifacts.load_build(Path(from_artifacts))
        inp = resumed[1]["inputs"]
        series, onto, profile = inp.get("series"), inp.get("onto") or {}, inp.get("profile")
        fragments = tuple(Path(f) if Path(f).is_absolute() else ws.root / f for f in inp.get("fragments", []))
    names = stages_for(ws, series, mode, xen_tree)
    if stop_after is not None and stop_after not in names:
        from kpatch_tool.errors import UsageError

        raise UsageError(f"--stop-after {stop_after}: not a stage of this run ({', '.join(names)})")
    c = _context(ws, series, mode, dict(onto or {}), profile, timeout, tuple(fragments), tuple(qemu_args), label,
                 rep, force, rerun_boot, expect, checks_from, long_checks)
    c.xen_tree = hypervisor_tree(ws, series, xen_tree) if mode == "xen+domU" else None
    c.manifest.data["inputs"]["xen_tree"] = c.xen_tree
    c.export = stop_after == "build"
    result = CiResult(c.run_dir.name, c.run_dir, 0, series, mode)
    if stop_after:
        names = [*names[:names.index(stop_after) + 1], "report"]
        c.manifest.data["stop_after"] = stop_after
    try:
        with WorkspaceLock(ws.out_dir, result.run_id):
            if resumed:
                _resume(c, rep, result, *resumed)
                names = [n for n in names if n not in ("trees", "apply", "config", "build")]
            with buildmod.remembered_source_states():
                for name in names:
                    if name != "report":
                        _run_stage(c, rep, result, name)
    except KptError as exc:
        result.exit_code = exc.exit_code
        result.message = exc.message
        result.failed_stage = result.stages[-1].name if result.stages and result.stages[-1].status == "failed" else None
        c.manifest.data["error"] = {"message": exc.message, "detail": exc.detail, "stage": result.failed_stage}
    except KeyboardInterrupt:
        c.manifest.data["interrupted"] = True
        c.manifest.write()
        raise
    _finish(c, rep, result)
    return result


def _finish(c: stagesmod.RunContext, rep: Reporter, result: CiResult) -> None:
    manifest = c.manifest
    manifest.data["exit_code"] = result.exit_code
    manifest.write()
    try:
        _run_stage(c, rep, result, "report")
    except KptError as exc:
        if not result.exit_code:
            result.exit_code, result.message = exc.exit_code, exc.message
    manifest.data["exit_code"] = result.exit_code
    manifest.data["complete"] = True
    manifest.write()


def _resume(c: stagesmod.RunContext, rep: Reporter, result: CiResult, run: Path, built: dict, b) -> None:
    """The stages a build job ran, taken over from its run folder (hashes already checked)."""
    inp = built["inputs"]
    for k in ("trees", "series_versions", "config_hash"):
        if k in inp:
            c.manifest.data["inputs"][k] = inp[k]
    c.manifest.data["inputs"]["from_artifacts"] = {"run_id": built["run_id"], "path": str(run)}
    c.build = b
    c.outputs["build"] = {**(built.get("outputs") or {}).get("build", {}), "dir": str(b.build_dir),
                          "from_run": built["run_id"]}
    now = time.time()
    for st in built.get("stages", []):
        if st["name"] in ("trees", "apply", "config", "build"):
            rec = StageRecord(st["name"], "cached", now, now, st.get("log", ""),
                              f"from build run {built['run_id']} (artifacts verified): {st.get('note', '')}")
            result.stages.append(rec)
            c.manifest.data["stages"].append(asdict(rec))
            rep.stage(rec.name)
            rep.done(rec.name, rec.status, 0.0, rec.note)
    c.manifest.write()


def default_linux_tree(ws: Workspace, series: str | None) -> str:
    """The Linux tree a run builds when --onto does not say: "linux", unless the series
    patches no "linux" but exactly one other Linux tree (a port to another base, say)."""
    from kpatch_tool import series as seriesmod

    if not series:
        return "linux"
    own = seriesmod.load_series(ws, series).trees
    others = [t for t in own if t != "linux" and t in ws.trees and ws.trees[t].kind == "linux"]
    if "linux" not in own and len(others) == 1:
        return others[0]
    return "linux"


def series_ci_settings(ws: Workspace, series: str) -> dict:
    """How a series wants to be booted when the command line does not say: series.toml [ci]
    (mode, profile, qemu_args, timeout), validated by the series model."""
    from kpatch_tool import series as seriesmod

    return seriesmod.load_series(ws, series).ci


def stages_for(ws: Workspace, series: str | None, mode: str, xen_tree: str | None = None) -> list[str]:
    """The stages a run goes through, in order: a series that changes QEMU, booted with a
    domU, gets a qemu stage (its QEMU is the domU's device model); one that changes Xen (or
    a run given --xen-tree) a xen stage (hypervisor and toolstack built from that tree)."""
    names = list(STAGES)
    if mode == "xen+domU":
        at = names.index("image")
        if hypervisor_tree(ws, series, xen_tree):
            names.insert(at, "xen")
        if series and device_model_tree(ws, series):
            names.insert(at, "qemu")
    return names


def hypervisor_tree(ws: Workspace, series: str | None, xen_tree: str | None = None) -> str | None:
    """The Xen tree a xen+domU run boots from: --xen-tree's, else the one the series (or the
    nearest of its depends) patches; None: Debian's packaged hypervisor and toolstack."""
    if xen_tree:
        spec = ws.trees.get(xen_tree)
        if spec is None or spec.kind != "xen":
            from kpatch_tool.errors import UsageError

            known = ", ".join(sorted(n for n, t in ws.trees.items() if t.kind == "xen")) or "none"
            raise UsageError(f"--xen-tree {xen_tree}: not a Xen tree of kpt.toml (Xen trees: {known})")
        return xen_tree
    if not series:
        return None
    for s in reversed(_chain(ws, series)):
        for tname, st in s.trees.items():
            if st.patches and tname in ws.trees and ws.trees[tname].kind == "xen":
                return tname
    return None


def device_model_tree(ws: Workspace, series: str) -> str | None:
    """The QEMU tree whose patched build is the domU's device model: the one the series itself
    patches, else the nearest one in its depends chain (virtio-xenbus-7.2's qemu-10.2 before
    virtio-xenbus's qemu); None when no series of the chain changes QEMU."""
    for s in reversed(_chain(ws, series)):
        for tname, st in s.trees.items():
            if st.patches and tname in ws.trees and ws.trees[tname].kind == "qemu":
                return tname
    return None


def _chain(ws: Workspace, series: str):
    from kpatch_tool import series as seriesmod

    return seriesmod.resolve_depends(ws, series)
