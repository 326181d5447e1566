"""The stages of `kpt ci`, each a unit over one typed run context.

A stage reads what earlier stages put into the context, does its work (or
decides its own cache hit), records its outputs in the manifest and returns
(status, note). run_ci (pipeline.py) only orders them and records the
outcome, so a stage can be tested or rerun alone and new stages slot in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpatch_tool import __version__, prereqs, trees
from kpatch_tool import build as buildmod
from kpatch_tool.errors import BootError, ConfigError, SmokeFailed
from kpatch_tool.runfolder import Manifest
from kpatch_tool.workspace import Workspace

sha256 = buildmod.sha256_file


@dataclass
class RunContext:
    """What a run was asked (first block) and what its stages found (second block)."""

    ws: Workspace
    series: str | None
    mode: str
    tree: str
    profile: str
    timeout: float
    onto: dict[str, str]
    fragments: tuple[Path, ...]
    qemu_args: tuple[str, ...]
    run_dir: Path
    manifest: Manifest
    detail: Callable[[str], None] = lambda msg: None
    force: bool = False
    rerun_boot: bool = False
    export: bool = False  # copy the built kernel into the run folder for boot jobs elsewhere (--stop-after build)
    # No series applied, but this series' checks and [domU] settings, in their base form.
    checks_from: str | None = None
    long_checks: bool = False  # the long form of the checks that have one
    # Boot the hypervisor and toolstack built from this Xen tree (else Debian's).
    xen_tree: str | None = None

    base_commit: str | None = None
    srctree: Path | None = None
    series_base: str | None = None
    config: object | None = None
    build: buildmod.BuildResult | None = None
    device_model: Path | None = None
    device_model_sha: str | None = None
    xen: Path | None = None  # the hypervisor ELF QEMU loads
    xen_tools: Path | None = None  # `make -C tools install` DESTDIR, laid over dom0's root
    xen_build_id: str = ""  # the hypervisor's GNU build id, as `xl info` reports it
    smoke: list[dict] = field(default_factory=list)
    initrd: Path | None = None
    images_key: dict | None = None
    boot_verdict: str | None = None

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def outputs(self) -> dict:
        return self.manifest.data["outputs"]

    def chain(self) -> list[str]:
        """The series whose checks and [domU] settings the run uses, deepest dependency first."""
        from kpatch_tool import series as seriesmod

        name = self.series or self.checks_from
        return [s.name for s in seriesmod.resolve_depends(self.ws, name)] if name else []


def trees_stage(c: RunContext) -> tuple[str, str]:
    tr = trees.import_tree(c.ws, c.tree, progress=c.detail)
    ref = c.onto.get(c.tree)
    commit = trees.resolve(tr, ref)
    c.base_commit = commit
    c.manifest.data["inputs"].setdefault("trees", {})[c.tree] = {
        "source": tr.source, "ref": ref or tr.ref, "commit": commit, "version": tr.version,
        **trees.origin_of(trees.get(c.ws, c.tree), commit)}
    return "ok", f"{c.tree}@{commit[:12]}"


def apply_stage(c: RunContext) -> tuple[str, str]:
    if not c.series:
        c.srctree = trees.checkout(c.ws, c.tree, c.onto.get(c.tree), progress=c.detail)
        return "skipped", "no series: the base itself"
    from kpatch_tool import apply as applymod
    from kpatch_tool import series as seriesmod

    chain = seriesmod.resolve_depends(c.ws, c.series)
    c.manifest.data["inputs"]["series_versions"] = {
        s.name: {"version": s.version,
                 "patches": {f"{t}/{p.file}": p.sha256 for t, st in s.trees.items() for p in st.patches}}
        for s in chain}
    res = applymod.apply_series(c.ws, c.series, tree=c.tree, onto=c.onto.get(c.tree), say=c.detail,
                                progress=lambda msg, i, n: c.detail(f"{msg} ({i}/{n})"))
    c.srctree = res.worktree
    c.series_base = res.series_base
    merged = f", {len(res.skipped_merged)} already upstream" if res.skipped_merged else ""
    c.outputs["worktree"] = {"path": str(res.worktree), "branch": res.branch, "head": res.head_commit}
    return ("cached" if res.noop else "ok"), f"{len(res.applied)} patches on {res.branch}{merged}"


def config_stage(c: RunContext) -> tuple[str, str]:
    from kpatch_tool import kconfig
    from kpatch_tool.pipeline import config_for

    prereqs.require("config")
    cfg_path = c.run_dir / ".config"
    cfg = config_for(c.ws, c.srctree, c.profile, series=(c.series,) if c.series else (),
                     fragments=tuple(c.fragments), output=cfg_path, force=c.force)
    ok_mark = c.ws.cache_dir / "config-checks" / f"{cfg.config_hash}.ok"
    if c.force or not ok_mark.exists():
        c.detail("cross-checking the .config with make olddefconfig")
        diff = kconfig.cross_check(c.srctree, cfg_path, c.logs / "config.log")
        if diff:
            raise ConfigError(f"{cfg_path} is not a fixed point of `make olddefconfig`", detail="\n".join(diff))
        ok_mark.parent.mkdir(parents=True, exist_ok=True)
        ok_mark.write_text("ok\n")
    c.config = cfg
    c.manifest.data["inputs"]["config_hash"] = cfg.config_hash
    how = "cached" if getattr(cfg, "from_cache", False) else "ok"
    return how, f"profile {c.profile}, config {cfg.config_hash[:12]}"


def build_stage(c: RunContext) -> tuple[str, str]:
    cfg = c.config
    b = buildmod.build_linux(c.ws, srctree=c.srctree, tree=c.tree, profile=c.profile, config_text=cfg.config_text,
                             config_hash=cfg.config_hash, progress=c.detail, force=c.force)
    if b.log.exists():
        shutil.copyfile(b.log, c.logs / "build.log")
    c.build = b
    c.outputs["build"] = {"dir": str(b.build_dir), "kernel_release": b.kernel_release,
                          "artifacts": {k: asdict(v) for k, v in b.artifacts.items()}, "warnings": len(b.warnings),
                          "seconds": round(b.duration, 1), "fetched_from": b.fetched_from, "ccache": b.ccache}
    if c.export:
        from kpatch_tool import artifacts

        c.outputs["exported"] = artifacts.export_build(c.run_dir, b)
    if b.fetched_from:
        return "cached", f"{b.kernel_release} (fetched from the shared cache: make not started)"
    cc = f", ccache {b.ccache['hits']}/{b.ccache['compilations']} hits" if b.ccache and b.ccache["compilations"] else ""
    return ("cached" if b.cached else "ok"), f"{b.kernel_release}{' (make not started)' if b.cached else cc}"


def qemu_stage(c: RunContext) -> tuple[str, str]:
    """The series' QEMU changes: applied to the qemu tree and built, to be dom0's device model."""
    from kpatch_tool import apply as applymod
    from kpatch_tool import build_qemu

    from kpatch_tool.pipeline import device_model_tree

    tree = device_model_tree(c.ws, c.series) or "qemu"
    res = applymod.apply_series(c.ws, c.series, tree=tree, onto=c.onto.get(tree), say=c.detail,
                                progress=lambda msg, i, n: c.detail(f"{tree}: {msg} ({i}/{n})"))
    q = build_qemu.build_qemu(c.ws, srctree=res.worktree, tree=tree, progress=c.detail, force=c.force)
    if q.log.exists():
        shutil.copyfile(q.log, c.logs / "qemu-build.log")
    c.device_model = q.qemu_system_i386
    c.device_model_sha = sha256(q.qemu_system_i386)
    c.outputs["qemu"] = {"tree": tree, "worktree": str(res.worktree), "head": res.head_commit,
                         "binary": str(q.qemu_system_i386), "version": q.version, "sha256": c.device_model_sha}
    how = "cached" if res.noop and q.cached else "ok"
    return how, f"{len(res.applied)} patches on {res.branch}, qemu {q.version}" + (
        " (ninja not started)" if q.cached else f" built in {q.duration:.0f}s")


def xen_stage(c: RunContext) -> tuple[str, str]:
    """The Xen tree (with the series' Xen patches, if any): hypervisor and toolstack built,
    to be booted and laid over dom0's Debian toolstack."""
    from kpatch_tool import apply as applymod
    from kpatch_tool import build_xen, pipeline

    tree = c.xen_tree
    patched = bool(c.series) and any(t == tree and st.patches for s in pipeline._chain(c.ws, c.series)
                                     for t, st in s.trees.items())
    if patched:
        res = applymod.apply_series(c.ws, c.series, tree=tree, onto=c.onto.get(tree), say=c.detail,
                                    progress=lambda msg, i, n: c.detail(f"{tree}: {msg} ({i}/{n})"))
        srctree, head, what = res.worktree, res.head_commit, f"{len(res.applied)} patches on {res.branch}"
    else:
        srctree = trees.checkout(c.ws, tree, c.onto.get(tree), progress=c.detail)
        head = trees.resolve(trees.get(c.ws, tree), c.onto.get(tree))
        what = f"{tree}@{head[:12]}"
    hv = build_xen.build_xen(c.ws, srctree=srctree, tree=tree, fragments=build_xen.smoke_fragments(c.ws),
                             progress=c.detail, force=c.force)
    tools = build_xen.build_tools(c.ws, srctree=srctree, tree=tree, progress=c.detail, force=c.force)
    for b, name in ((hv, "xen-build.log"), (tools, "xen-tools-build.log")):
        if b.log.exists():
            shutil.copyfile(b.log, c.logs / name)
    c.xen, c.xen_tools, c.xen_build_id = hv.xen, tools.dist, build_xen.build_id(hv.build_dir / "xen-syms")
    c.outputs["xen"] = {"tree": tree, "worktree": str(srctree), "head": head, "version": hv.version,
                        "fragments": hv.fragments,
                        "hypervisor": {"path": str(hv.xen), "sha256": sha256(hv.xen), "build_id": c.xen_build_id,
                                       "config_hash": hv.config_hash,
                                       "seconds": round(hv.duration, 1), "cached": hv.cached},
                        "tools": {"dist": str(tools.dist), "seconds": round(tools.duration, 1), "cached": tools.cached,
                                  "artifacts": {k: asdict(v) for k, v in tools.artifacts.items()}}}
    cached = hv.cached and tools.cached
    return ("cached" if cached else "ok"), f"{what}, Xen {hv.version}: hypervisor + tools " + (
        "(make not started)" if cached else f"built in {hv.duration + tools.duration:.0f}s")


def image_stage(c: RunContext) -> tuple[str, str]:
    from kpatch_tool import image

    prereqs.require("image")
    b = c.build
    chain = c.chain()
    c.smoke = image.load_smoke(c.ws, chain, on_base=not c.series and bool(c.checks_from))
    if c.mode == "xen+domU":
        from kpatch_tool import nested

        imgs = nested.images(c.ws, build=b, smoke=c.smoke, progress=c.detail, device_model=c.device_model,
                             series=chain, long_checks=c.long_checks, xen_tools=c.xen_tools,
                             xen_build_id=c.xen_build_id)
        c.initrd = imgs.dom0_initrd
        c.outputs["images"] = {k: {"path": str(v), "sha256": sha256(v)} for k, v in imgs.paths().items()}
        c.images_key = {k: v["sha256"] for k, v in c.outputs["images"].items()}
        return "ok", f"dom0 rootfs {imgs.dom0_initrd.stat().st_size / 2**20:.0f} MiB"
    c.initrd = image.build_initramfs(c.ws, kernel_release=b.kernel_release, modules_dir=b.modules_dir,
                                     smoke=c.smoke, mode=c.mode, long_checks=c.long_checks)
    c.outputs["images"] = {"initramfs": {"path": str(c.initrd), "sha256": sha256(c.initrd)}}
    c.images_key = {"initramfs": c.outputs["images"]["initramfs"]["sha256"]}
    return "ok", f"{c.initrd.name} ({c.initrd.stat().st_size / 1024:.0f} KiB)"


def code_hash() -> str:
    """kpt's code and templates that shape a boot (its version number never changes on a fix)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for f in sorted([*pkg.glob("*.py"), *(pkg / "templates").glob("*")]):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def boot_cache_key(c: RunContext, xen: Path | None) -> str:
    """Everything that shaped a boot's verdict: the kernel and its build's identity
    (host tools included), every image, QEMU's and Xen's versions, kpt's own code."""
    from kpatch_tool import qemu

    h = hashlib.sha256()
    tools = json.dumps([prereqs.versions("boot"), prereqs.versions("xen") if c.mode != "guest" else {},
                        prereqs.tool_version(qemu.qemu_binary())], sort_keys=True)
    inputs = json.dumps([c.build.identity, c.images_key, c.device_model_sha], sort_keys=True, default=str)
    for part in (c.mode, sha256(c.build.bzimage), sha256(c.initrd), sha256(xen) if xen else "-", str(c.timeout),
                 qemu.qemu_binary(), __version__, code_hash(), tools, inputs, *c.qemu_args):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:20]


def _reuse_boot(c: RunContext, cache: Path) -> tuple[str, str]:
    from kpatch_tool import results

    for f in cache.iterdir():
        shutil.copyfile(f, c.run_dir / f.name)
    rr = results.load_json(c.run_dir / results.RESULTS_JSON)
    c.boot_verdict = rr.verdict
    c.outputs["boot"] = {"verdict": rr.verdict, "reused_from": str(cache), "reused": True, "phases": rr.phases}
    if rr.verdict != "pass":
        raise_verdict(rr, c.run_dir)
    return "cached", (f"{rr.verdict}: {rr.message} (reused: same kernel, images, tools and mode as the "
                      f"boot in {cache}; --rerun-boot or --force boots again)")


def _keep_boot(c: RunContext, cache: Path, console: Path) -> None:
    from kpatch_tool import results

    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in (console, c.run_dir / results.RESULTS_JSON, c.run_dir / results.RESULTS_XML):
        if f.exists():
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)


def boot_stage(c: RunContext) -> tuple[str, str]:
    from kpatch_tool import boot as bootmod
    from kpatch_tool import qemu, results

    prereqs.require("boot")
    if c.mode != "guest":
        prereqs.require("xen")
    xen = qemu.xen_binary(c.ws, c.xen) if c.mode != "guest" else None
    cache = c.ws.cache_dir / "boots" / boot_cache_key(c, xen)
    if not (c.rerun_boot or c.force) and (cache / results.RESULTS_JSON).exists():
        return _reuse_boot(c, cache)

    def on_line(line: str) -> None:
        c.detail(f"console: {line[:150]}")

    b = c.build
    if c.mode == "xen+domU":
        from kpatch_tool import nested

        res = nested.boot(c.ws, kernel=b.bzimage, initrd=c.initrd, run_dir=c.run_dir, timeout=c.timeout,
                          on_line=on_line, extra_qemu_args=c.qemu_args, xen=xen)
    else:
        res = bootmod.boot(c.ws, mode=c.mode, kernel=b.bzimage, initrd=c.initrd, run_dir=c.run_dir,
                           timeout=c.timeout, on_line=on_line, extra_qemu_args=c.qemu_args)
    c.boot_verdict = res.verdict
    c.outputs["boot"] = {"verdict": res.verdict, "message": res.message, "seconds": round(res.duration, 1),
                         "console": str(res.console_log), "phases": res.phases}
    if res.verdict in ("pass", "fail"):
        # A verdict the checks reached is worth keeping; a hang or panic is rerun.
        _keep_boot(c, cache, res.console_log)
    res.raise_for_verdict()
    return "ok", f"{res.verdict}: {res.message} in {res.duration:.1f}s"


def report_stage(c: RunContext) -> tuple[str, str]:
    from kpatch_tool import report

    paths = report.write_all(c.run_dir)
    return "ok", ", ".join(p.name for p in paths)


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], tuple[str, str]]] = {
    "trees": trees_stage, "apply": apply_stage, "config": config_stage, "build": build_stage,
    "qemu": qemu_stage, "xen": xen_stage, "image": image_stage, "boot": boot_stage, "report": report_stage,
}


def raise_verdict(rr, run_dir: Path) -> None:
    if rr.verdict == "fail":
        failed = [f"{c.classname}:{c.name}" for c in rr.cases if c.status == "fail"]
        raise SmokeFailed(f"{len(failed)} check(s) failed: {', '.join(failed)} (results in {run_dir})")
    raise BootError(f"boot {rr.verdict}: {rr.message} (console {run_dir / 'console.log'})")
