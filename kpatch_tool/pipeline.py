"""The composer: trees -> apply -> config -> build -> image -> boot -> report.

Each stage is a function of its own module; this one chains them for `kpt ci`
and for the commands that need an earlier stage's output (e.g. `kpt build`
needs a config). Nothing here knows how a stage works inside.
"""

from __future__ import annotations

import os
from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool import prereqs, trees
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
    depends on the source (commit + edits), the base, the fragments' bytes and
    our kconfig code, so a rerun with those unchanged reads it back instead.
    Only configurations that validated are remembered.
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
        tmp = hit.with_suffix(".tmp")
        tmp.write_text(res.config_text)
        os.replace(tmp, hit)
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

import fcntl  # noqa: E402
import getpass  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

from kpatch_tool import __version__  # noqa: E402
from kpatch_tool.errors import KptError, UsageError  # noqa: E402
from kpatch_tool.progress import Reporter  # noqa: E402

STAGES = ["trees", "apply", "config", "build", "image", "boot", "report"]
MODES = ("guest", "xen", "xen+domU")
PROFILE_FOR_MODE = {"guest": "guest", "xen": "xen-dom0", "xen+domU": "xen-dom0"}
MANIFEST = "manifest.json"


@dataclass
class StageRecord:
    name: str
    status: str  # ok, cached, failed, skipped
    start: float
    end: float
    log: str = ""
    note: str = ""
    exit_code: int = 0

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 2)


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


class WorkspaceLock:
    """One `kpt ci` per workspace at a time; the holder is named in the refusal."""

    def __init__(self, out_dir: Path, run_id: str):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".kpt-ci.lock"
        self.run_id = run_id
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another run"
            self.fh.close()
            raise UsageError(f"workspace is busy: {holder} holds {self.path}; wait for it or stop it") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"kpt ci run {self.run_id} (pid {os.getpid()})\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        self.fh.seek(0)
        self.fh.truncate()
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


_sha256 = buildmod.sha256_file


def new_run_dir(ws: Workspace, label: str) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    for n in range(100):
        run_id = f"{stamp}-{safe}" + (f"-{n}" if n else "")
        path = ws.out_dir / run_id
        try:
            path.mkdir(parents=True)
            return run_id, path
        except FileExistsError:
            continue
    raise KptError(f"cannot make a run folder under {ws.out_dir}")


class Manifest:
    """manifest.json, rewritten atomically after every stage; `complete` only at the end."""

    def __init__(self, run_dir: Path, data: dict):
        self.path = run_dir / MANIFEST
        self.data = data
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _code_hash() -> str:
    """kpt's code and templates that shape a boot (its version number never changes on a fix)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for f in sorted([*pkg.glob("*.py"), *(pkg / "templates").glob("*")]):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _boot_cache_key(mode: str, kernel: Path, initrd: Path, xen: Path | None, timeout: float,
                    qemu_args: tuple[str, ...] = (), inputs: tuple = ()) -> str:
    """Everything that shaped a boot's verdict: the kernel and its build's identity
    (host tools included), every image, QEMU's and Xen's versions, kpt's own code."""
    from kpatch_tool import qemu

    h = hashlib.sha256()
    tools = json.dumps([prereqs.versions("boot"), prereqs.versions("xen") if mode != "guest" else {},
                        prereqs.tool_version(qemu.qemu_binary())], sort_keys=True)
    for part in (mode, _sha256(kernel), _sha256(initrd), _sha256(xen) if xen else "-", str(timeout),
                 qemu.qemu_binary(), __version__, _code_hash(), tools, json.dumps(inputs, sort_keys=True, default=str),
                 *qemu_args):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:20]


def run_ci(ws: Workspace, series: str | None = None, *, mode: str = "guest", onto: dict[str, str] | None = None,
           profile: str | None = None, timeout: float | None = None, reporter: Reporter | None = None,
           rerun_boot: bool = False, label: str | None = None, fragments: tuple[Path, ...] = (),
           qemu_args: tuple[str, ...] = (), force: bool = False) -> CiResult:
    """Run one cell: trees -> apply -> config -> build -> image -> boot -> report."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode}: one of {', '.join(MODES)}")
    rep = reporter or Reporter()
    onto = dict(onto or {})
    declared = series_ci_settings(ws, series) if series else {}
    profile = profile or declared.get("profile")
    qemu_args = tuple(declared.get("qemu_args", ())) + tuple(qemu_args)
    timeout = timeout or declared.get("timeout")
    tree = default_linux_tree(ws, series)
    for t in onto:
        if t in ws.trees and ws.trees[t].kind == "linux":
            tree = t
    ws.tree(tree)
    profile = profile or PROFILE_FOR_MODE[mode]
    if timeout is None:
        # TCG on 2 shared cores: a nested boot took 113 s alone and over 420 s next to builds.
        timeout = {"guest": 120, "xen": 240, "xen+domU": 720}[mode]
    run_id, run_dir = new_run_dir(ws, label or f"{series or 'base'}-{tree}-{mode.replace('+', '-')}")
    logs = run_dir / "logs"
    logs.mkdir()
    manifest = Manifest(run_dir, {
        "run_id": run_id, "tool": {"name": "kpatch-tool", "version": __version__},
        "host": {"node": platform.node(), "kernel": platform.release(), "cpus": len(os.sched_getaffinity(0)),
                 "user": getpass.getuser()},
        "inputs": {"series": series, "mode": mode, "profile": profile, "tree": tree, "onto": onto,
                   "fragments": [str(f) for f in fragments], "qemu_args": list(qemu_args)},
        "outputs": {}, "stages": [], "complete": False, "exit_code": None,
    })
    result = CiResult(run_id, run_dir, 0, series, mode)
    ctx: dict = {}

    def stage(name, fn):
        rep.stage(name)
        start = time.time()
        try:
            status, note = fn()
        except KptError as exc:
            rec = StageRecord(name, "failed", start, time.time(), str(logs / f"{name}.log"), exc.message,
                              exc.exit_code)
            with (logs / f"{name}.log").open("a") as fh:
                fh.write(f"error: {exc.message}\n{exc.detail or ''}\n")
            result.stages.append(rec)
            manifest.data["stages"].append(asdict(rec))
            manifest.write()
            rep.done(name, "failed", rec.seconds, exc.message[:80])
            raise
        rec = StageRecord(name, status, start, time.time(), str(logs / f"{name}.log"), note)
        with (logs / f"{name}.log").open("a") as fh:
            fh.write(f"{name}: {status} in {rec.seconds:.1f}s: {note}\n")
        result.stages.append(rec)
        manifest.data["stages"].append(asdict(rec))
        manifest.write()
        rep.done(name, status, rec.seconds, note)

    def detail(msg, *_):
        rep.detail(str(msg))

    def do_trees():
        imported = []
        for t in sorted({tree}):
            tr = trees.import_tree(ws, t, progress=detail)
            ref = onto.get(t)
            commit = trees.resolve(tr, ref)
            ctx["base_commit"] = commit
            origin = trees.origin_of(tr, commit)
            manifest.data["inputs"].setdefault("trees", {})[t] = {"source": tr.source, "ref": ref or tr.ref,
                                                                   "commit": commit, "version": tr.version, **origin}
            imported.append(f"{t}@{commit[:12]}")
        return "ok", ", ".join(imported)

    def do_apply():
        if not series:
            ctx["srctree"] = trees.checkout(ws, tree, onto.get(tree), progress=detail)
            return "skipped", "no series: the base itself"
        from kpatch_tool import apply as applymod
        from kpatch_tool import series as seriesmod

        chain = seriesmod.resolve_depends(ws, series)
        manifest.data["inputs"]["series_versions"] = {
            s.name: {"version": s.version,
                     "patches": {f"{t}/{p.file}": p.sha256 for t, st in s.trees.items() for p in st.patches}}
            for s in chain}
        res = applymod.apply_series(ws, series, tree=tree, onto=onto.get(tree), say=detail,
                                    progress=lambda msg, i, n: detail(f"{msg} ({i}/{n})"))
        ctx["srctree"] = res.worktree
        ctx["series_base"] = res.series_base
        merged = f", {len(res.skipped_merged)} already upstream" if res.skipped_merged else ""
        manifest.data["outputs"]["worktree"] = {"path": str(res.worktree), "branch": res.branch,
                                                "head": res.head_commit}
        return ("cached" if res.noop else "ok"), f"{len(res.applied)} patches on {res.branch}{merged}"

    def do_config():
        from kpatch_tool import kconfig

        cfg_path = run_dir / ".config"
        prereqs.require("config")
        cfg = config_for(ws, ctx["srctree"], profile, series=(series,) if series else (),
                         fragments=tuple(fragments), output=cfg_path, force=force)
        ok_mark = ws.cache_dir / "config-checks" / f"{cfg.config_hash}.ok"
        if force or not ok_mark.exists():
            detail("cross-checking the .config with make olddefconfig")
            diff = kconfig.cross_check(ctx["srctree"], cfg_path, logs / "config.log")
            if diff:
                from kpatch_tool.errors import ConfigError

                raise ConfigError(f"{cfg_path} is not a fixed point of `make olddefconfig`", detail="\n".join(diff))
            ok_mark.parent.mkdir(parents=True, exist_ok=True)
            ok_mark.write_text("ok\n")
        ctx["config"] = cfg
        manifest.data["inputs"]["config_hash"] = cfg.config_hash
        how = "cached" if getattr(cfg, "from_cache", False) else "ok"
        return how, f"profile {profile}, config {cfg.config_hash[:12]}"

    def do_build():
        cfg = ctx["config"]
        b = buildmod.build_linux(ws, srctree=ctx["srctree"], tree=tree, profile=profile,
                                 config_text=cfg.config_text, config_hash=cfg.config_hash, progress=detail,
                                 force=force)
        shutil.copyfile(b.log, logs / "build.log") if b.log.exists() else None
        ctx["build"] = b
        manifest.data["outputs"]["build"] = {"dir": str(b.build_dir), "kernel_release": b.kernel_release,
                                             "artifacts": {k: asdict(v) for k, v in b.artifacts.items()},
                                             "warnings": len(b.warnings)}
        return ("cached" if b.cached else "ok"), f"{b.kernel_release}{' (make not started)' if b.cached else ''}"

    def do_qemu():
        """The series' QEMU changes: applied to the qemu tree and built, to be dom0's device model."""
        from kpatch_tool import apply as applymod
        from kpatch_tool import build_qemu

        res = applymod.apply_series(ws, series, tree="qemu", onto=onto.get("qemu"), say=detail,
                                    progress=lambda msg, i, n: detail(f"qemu: {msg} ({i}/{n})"))
        prereqs.require("qemu-build")
        q = build_qemu.build_qemu(ws, srctree=res.worktree, tree="qemu", progress=detail, force=force)
        shutil.copyfile(q.log, logs / "qemu-build.log") if q.log.exists() else None
        ctx["device_model"] = q.qemu_system_i386
        ctx["device_model_sha"] = _sha256(q.qemu_system_i386)
        manifest.data["outputs"]["qemu"] = {"worktree": str(res.worktree), "head": res.head_commit,
                                            "binary": str(q.qemu_system_i386), "version": q.version,
                                            "sha256": _sha256(q.qemu_system_i386)}
        how = "cached" if res.noop and q.cached else "ok"
        return how, f"{len(res.applied)} patches on {res.branch}, qemu {q.version}" + (
            " (ninja not started)" if q.cached else f" built in {q.duration:.0f}s")

    def do_image():
        from kpatch_tool import image

        prereqs.require("image")
        b = ctx["build"]
        chain = [s.name for s in _chain(ws, series)] if series else []
        smoke = image.load_smoke(ws, chain)
        ctx["smoke"] = smoke
        if mode == "xen+domU":
            from kpatch_tool import nested

            imgs = nested.images(ws, build=b, smoke=smoke, progress=detail, device_model=ctx.get("device_model"),
                                 series=chain)
            ctx["initrd"] = imgs.dom0_initrd
            manifest.data["outputs"]["images"] = {k: {"path": str(v), "sha256": _sha256(v)}
                                                  for k, v in imgs.paths().items()}
            ctx["images_key"] = {k: v["sha256"] for k, v in manifest.data["outputs"]["images"].items()}
            return "ok", f"dom0 rootfs {imgs.dom0_initrd.stat().st_size / 2**20:.0f} MiB"
        initrd = image.build_initramfs(ws, kernel_release=b.kernel_release, modules_dir=b.modules_dir,
                                       smoke=smoke, mode=mode)
        ctx["initrd"] = initrd
        manifest.data["outputs"]["images"] = {"initramfs": {"path": str(initrd), "sha256": _sha256(initrd)}}
        return "ok", f"{initrd.name} ({initrd.stat().st_size / 1024:.0f} KiB)"

    def do_boot():
        from kpatch_tool import boot as bootmod
        from kpatch_tool import qemu, results

        b = ctx["build"]
        xen = qemu.xen_binary(ws) if mode != "guest" else None
        prereqs.require("boot")
        if mode != "guest":
            prereqs.require("xen")
        key = _boot_cache_key(mode, b.bzimage, ctx["initrd"], xen, timeout, qemu_args,
                              (b.identity, ctx.get("images_key"), ctx.get("device_model_sha")))
        cache = ws.cache_dir / "boots" / key
        if not (rerun_boot or force) and (cache / results.RESULTS_JSON).exists():
            for f in cache.iterdir():
                shutil.copyfile(f, run_dir / f.name)
            rr = results.load_json(run_dir / results.RESULTS_JSON)
            ctx["boot_verdict"] = rr.verdict
            manifest.data["outputs"]["boot"] = {"verdict": rr.verdict, "reused_from": str(cache)}
            if rr.verdict != "pass":
                _raise_verdict(rr, run_dir)
            manifest.data["outputs"]["boot"]["reused"] = True
            return "cached", (f"{rr.verdict}: {rr.message} (reused: same kernel, images, tools and mode as the "
                              f"boot in {cache}; --rerun-boot or --force boots again)")

        def on_line(line):
            detail(f"console: {line[:150]}")

        if mode == "xen+domU":
            from kpatch_tool import nested

            res = nested.boot(ws, kernel=b.bzimage, initrd=ctx["initrd"], run_dir=run_dir, timeout=timeout,
                              on_line=on_line, extra_qemu_args=qemu_args)
        else:
            res = bootmod.boot(ws, mode=mode, kernel=b.bzimage, initrd=ctx["initrd"], run_dir=run_dir,
                               timeout=timeout, on_line=on_line, extra_qemu_args=qemu_args)
        manifest.data["outputs"]["boot"] = {"verdict": res.verdict, "message": res.message,
                                            "seconds": round(res.duration, 1), "console": str(res.console_log)}
        if res.verdict in ("pass", "fail"):
            # A verdict the checks reached is worth keeping; a hang or panic is rerun.
            tmp = cache.with_name(cache.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in (res.console_log, run_dir / results.RESULTS_JSON, run_dir / results.RESULTS_XML):
                if f.exists():
                    shutil.copyfile(f, tmp / f.name)
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
        res.raise_for_verdict()
        return "ok", f"{res.verdict}: {res.message} in {res.duration:.1f}s"

    def do_report():
        from kpatch_tool import report

        paths = report.write_all(run_dir)
        return "ok", ", ".join(p.name for p in paths)

    try:
        with WorkspaceLock(ws.out_dir, run_id):
            steps = {"trees": do_trees, "apply": do_apply, "config": do_config, "build": do_build,
                     "qemu": do_qemu, "image": do_image, "boot": do_boot}
            for name in stages_for(ws, series, mode):
                if name in steps:
                    stage(name, steps[name])
    except KptError as exc:
        result.exit_code = exc.exit_code
        result.message = exc.message
        result.failed_stage = result.stages[-1].name if result.stages and result.stages[-1].status == "failed" else None
        manifest.data["error"] = {"message": exc.message, "detail": exc.detail, "stage": result.failed_stage}
    except KeyboardInterrupt:
        manifest.data["interrupted"] = True
        manifest.write()
        raise
    manifest.data["exit_code"] = result.exit_code
    manifest.write()
    try:
        stage("report", do_report)
    except KptError as exc:
        if not result.exit_code:
            result.exit_code, result.message = exc.exit_code, exc.message
    manifest.data["exit_code"] = result.exit_code
    manifest.data["complete"] = True
    manifest.write()
    return result


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
    (mode, profile, qemu_args, timeout)."""
    import tomllib

    path = ws.patches_dir / series / "series.toml"
    try:
        data = tomllib.loads(path.read_text()).get("ci") or {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    if not isinstance(data, dict) or set(data) - {"mode", "profile", "qemu_args", "timeout"}:
        raise UsageError(f"{path}: [ci] takes mode, profile, qemu_args and timeout")
    if "mode" in data and data["mode"] not in MODES:
        raise UsageError(f"{path}: [ci] mode '{data['mode']}' ({', '.join(MODES)})")
    return data


def stages_for(ws: Workspace, series: str | None, mode: str) -> list[str]:
    """The stages a run goes through, in order: a series that changes QEMU, booted with a
    domU, gets a qemu stage (its QEMU is the domU's device model)."""
    if mode == "xen+domU" and series and _needs_device_model(ws, series):
        return [*STAGES[:4], "qemu", *STAGES[4:]]
    return list(STAGES)


def _needs_device_model(ws: Workspace, series: str) -> bool:
    """A series (or one it depends on) that changes QEMU boots with that QEMU as the domU's device model."""
    return any("qemu" in s.trees and s.trees["qemu"].patches for s in _chain(ws, series))


def _chain(ws: Workspace, series: str):
    from kpatch_tool import series as seriesmod

    return seriesmod.resolve_depends(ws, series)


def _raise_verdict(rr, run_dir: Path) -> None:
    from kpatch_tool.errors import BootError, SmokeFailed

    if rr.verdict == "fail":
        failed = [f"{c.classname}:{c.name}" for c in rr.cases if c.status == "fail"]
        raise SmokeFailed(f"{len(failed)} check(s) failed: {', '.join(failed)} (results in {run_dir})")
    raise BootError(f"boot {rr.verdict}: {rr.message} (console {run_dir / 'console.log'})")
