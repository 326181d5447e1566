"""`kpt build ...`: Linux, one module, per-patch bisect builds, Xen, QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import click


from kpatch_tool.ui import console, say

@click.group(invoke_without_command=True)
@click.option("--each", "each", metavar="SERIES", help="Build after every patch of SERIES (bisectability).")
@click.option("--profile", default="guest", show_default=True)
@click.option("--tree", default="linux", show_default=True)
@click.option("--wrapper", default="ccache", show_default=True, help="Compiler wrapper: ccache, distcc, icecc or none.")
@click.option("--jobs", "-j", type=int, default=None, help="make -j (default: the cores we may use).")
@click.pass_context
def build(ctx, each, profile, tree, wrapper, jobs):
    """Build kernels (and Xen / QEMU) out of tree, cached by source and config.

    \b
    Example: kpt build linux --profile guest
    Example: kpt build --each netback-per-vif --profile xen-dom0
    Example: kpt build --each virtio-xenbus --tree qemu
    """
    if ctx.invoked_subcommand is None:
        if not each:
            click.echo(ctx.get_help())
            return
        ctx.invoke(build_each_cmd, series=each, profile=profile, tree=tree, wrapper=wrapper, jobs=jobs)

@build.command("linux")
@click.option("--profile", default="guest", show_default=True)
@click.option("--tree", default="linux", show_default=True)
@click.option("--series", default=None, help="Apply this series (with its depends) first and build its worktree.")
@click.option("--worktree", type=click.Path(file_okay=False), default=None, help="Build this source folder instead.")
@click.option("--onto", default=None, help="Base ref instead of the tree's default.")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False), help="Extra config fragment.")
@click.option("--wrapper", default="ccache", show_default=True)
@click.option("--jobs", "-j", type=int, default=None)
@click.option("--force", is_flag=True, help="Run make even when nothing changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
@click.pass_obj
def build_linux_cmd(obj, profile, tree, series, worktree, onto, fragments, wrapper, jobs, force, as_json):
    """Configure and build bzImage + modules; a rerun with nothing changed does not start make.

    \b
    Example: kpt build linux --profile xen-dom0 --series netback-per-vif
    """
    from kpatch_tool import pipeline

    srctree, _ = pipeline.source_for(obj.ws, tree, series=series, worktree=worktree, onto=onto, progress=say)
    res = pipeline.build_profile(obj.ws, tree, profile, srctree=srctree, series=(series,) if series else (),
                                 fragments=tuple(Path(f) for f in fragments), wrapper=wrapper, jobs=jobs,
                                 progress=say, force=force)
    _manifest(res, f"{tree} {profile}: {res.kernel_release}", as_json, tool="make")

@build.command("module")
@click.argument("subdir")
@click.option("--profile", default="xen-dom0", show_default=True)
@click.option("--tree", default="linux", show_default=True)
@click.option("--series", default=None)
@click.option("--worktree", type=click.Path(file_okay=False), default=None)
@click.option("--wrapper", default="ccache", show_default=True)
@click.option("--jobs", "-j", type=int, default=None)
@click.pass_obj
def build_module_cmd(obj, subdir, profile, tree, series, worktree, wrapper, jobs):
    """Rebuild the modules of one directory against the built kernel; they replace the staged ones.

    \b
    Example: kpt build module drivers/net/xen-netback --profile xen-dom0
    """
    from kpatch_tool import build as buildmod
    from kpatch_tool import pipeline

    srctree, _ = pipeline.source_for(obj.ws, tree, series=series, worktree=worktree, progress=say)
    res = pipeline.build_profile(obj.ws, tree, profile, srctree=srctree, series=(series,) if series else (),
                                 wrapper=wrapper, jobs=jobs, progress=say)
    for ko in buildmod.build_module(obj.ws, res, subdir, wrapper=wrapper, jobs=jobs, progress=say):
        console.print(f"staged {ko}")

@build.command("each")
@click.argument("series")
@click.option("--profile", default="guest", show_default=True, help="Kernel profile (Linux trees only).")
@click.option("--tree", default="linux", show_default=True, help="A linux or qemu tree of the workspace.")
@click.option("--wrapper", default="ccache", show_default=True)
@click.option("--jobs", "-j", type=int, default=None)
@click.pass_obj
def build_each_cmd(obj, series, profile, tree, wrapper, jobs):
    """Build after each patch of a series; report builds/fails and new warnings per patch.

    A QEMU tree (--tree qemu) is configured once as `kpt build qemu` does
    and built with ninja after each of the series' own patches, on top of
    the series it depends on. A Xen tree (--tree xen): the hypervisor and
    the tools, as `kpt build xen` builds them.

    \b
    Example: kpt build each netback-per-vif --profile xen-dom0
    Example: kpt build each virtio-xenbus --tree qemu
    Example: kpt build each virtio-xenbus --tree xen
    """
    from kpatch_tool.errors import UsageError

    spec = obj.ws.trees.get(tree)
    if spec is None:
        raise UsageError(f"no tree '{tree}' in {obj.ws.root / 'kpt.toml'} (trees: {', '.join(obj.ws.trees)})")
    if spec.kind == "linux":
        steps = _each_linux(obj.ws, series, profile, tree, wrapper, jobs)
    elif spec.kind == "qemu":
        steps = _each_qemu(obj.ws, series, tree, wrapper, jobs)
    elif spec.kind == "xen":
        steps = _each_xen(obj.ws, series, tree, wrapper, jobs)
    else:
        raise UsageError(f"tree '{tree}' is a {spec.kind} tree: --each builds linux, qemu and xen trees")
    _each_table(series, steps)

def _each_linux(ws, series, profile, tree, wrapper, jobs):
    from kpatch_tool import build as buildmod
    from kpatch_tool import pipeline

    srctree, base = pipeline.source_for(ws, tree, series=series, progress=say)
    cfg = pipeline.config_for(ws, srctree, profile, series=(series,))
    return buildmod.build_each(ws, worktree=srctree, base=base, tree=tree, profile=profile,
                               config_text=cfg.config_text, config_hash=cfg.config_hash, wrapper=wrapper,
                               jobs=jobs, progress=say)

def _each_xen(ws, series, tree, wrapper, jobs):
    from kpatch_tool import apply as applymod
    from kpatch_tool import build_xen

    ar = applymod.apply_series(ws, series, tree=tree, say=say,
                               progress=lambda msg, i, n: say(f"{msg} ({i}/{n})"))
    return build_xen.build_each_xen(ws, worktree=Path(ar.worktree), base=ar.series_base, tree=tree,
                                    fragments=build_xen.smoke_fragments(ws), wrapper=wrapper, jobs=jobs,
                                    progress=say)

def _each_qemu(ws, series, tree, wrapper, jobs):
    from kpatch_tool import apply as applymod
    from kpatch_tool import build_qemu

    ar = applymod.apply_series(ws, series, tree=tree, say=say,
                               progress=lambda msg, i, n: say(f"{msg} ({i}/{n})"))
    # The series' own patches: those of the series it depends on are their own run's.
    if ar.series_base != ar.base_commit:
        say(f"{series}: its patches on top of {ar.series_base[:12]} (the series it depends on)")
    return build_qemu.build_each_qemu(ws, worktree=Path(ar.worktree), base=ar.series_base, tree=tree,
                                      wrapper=wrapper, jobs=jobs, progress=say)

def _each_table(series, steps) -> None:
    """One line a patch; exit 5 when one fails or adds a warning."""
    from kpatch_tool.errors import BuildError

    bad = False
    for s in steps:
        mark = "builds" if s.status == "builds" else "FAILS"
        delta = f"+{len(s.new_warnings)} -{len(s.fixed_warnings)} warnings"
        console.print(f"{s.index:3} {mark:6} {delta:22} {s.seconds:6.1f}s  {s.subject}")
        for w in s.new_warnings:
            console.print(f"      new warning: {w}")
        if s.error:
            console.print(f"      {s.error}")
        bad |= s.status != "builds" or bool(s.new_warnings)
    if bad:
        raise BuildError(f"series {series}: not every patch builds cleanly (see above)")

def _manifest(res, head: str, as_json: bool, tool: str | None = None) -> None:
    """The result of any build: JSON, or a head line and one line per artifact."""
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=1))
        return
    idle = f"{tool} not started" if tool else "nothing started"
    how = f"cached, {idle}" if res.cached else f"built in {res.duration:.1f}s"
    console.print(f"{head} ({how})")
    console.print(f"  build dir: {res.build_dir}")
    for name, a in res.artifacts.items():
        console.print(f"  {name:17} {a.size:>10}  {a.sha256[:16]}  {a.path}")
    if res.warnings:
        console.print(f"  {len(res.warnings)} compiler warning(s); see {res.log}")

@build.command("xen")
@click.option("--tree", default="xen", show_default=True)
@click.option("--series", default=None, help="Apply this series (with its depends) first and build its worktree.")
@click.option("--worktree", type=click.Path(file_okay=False), default=None, help="Build this Xen source folder instead.")
@click.option("--onto", default=None, help="Base ref instead of the tree's default.")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Kconfig fragment over x86_64_defconfig (repeatable); every line is checked.")
@click.option("--wrapper", default="ccache", show_default=True)
@click.option("--jobs", "-j", type=int, default=None)
@click.option("--force", is_flag=True, help="Run make even when nothing changed.")
@click.option("--tools/--no-tools", default=True, show_default=True,
              help="Also build and install the toolstack (libxl, xl, xenstored, xenconsoled, libraries).")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
@click.pass_obj
def build_xen_cmd(obj, tree, series, worktree, onto, fragments, wrapper, jobs, force, tools, as_json):
    """Configure and build the Xen hypervisor (xen, xen.gz) out of tree, and the tools; cached like Linux.

    \b
    Example: kpt build xen --tree xen --fragment kernel-configs/xen/smoke.config
    Example: kpt build xen --series virtio-xenbus --no-tools
    """
    from kpatch_tool import build_xen, pipeline

    srctree, _ = pipeline.source_for(obj.ws, tree, series=series, worktree=worktree, onto=onto, progress=say)
    res = build_xen.build_xen(obj.ws, srctree=srctree, tree=tree, fragments=[Path(f) for f in fragments],
                              wrapper=wrapper, jobs=jobs, progress=say, force=force)
    t = build_xen.build_tools(obj.ws, srctree=srctree, tree=tree, wrapper=wrapper, jobs=jobs, progress=say,
                              force=force) if tools else None
    if as_json:
        # One document: the hypervisor's manifest, with the tools' under "tools".
        click.echo(json.dumps({**res.to_json(), **({"tools": t.to_json()} if t else {})}, indent=1))
        return
    _manifest(res, f"{tree}: Xen {res.version}", False)
    if t:
        _manifest(t, f"{tree}: Xen {t.version} tools (installed in {t.dist})", False)

@build.command("qemu")
@click.option("--tree", default="qemu", show_default=True)
@click.option("--series", default=None, help="Apply this series (with its depends) first and build its worktree.")
@click.option("--worktree", type=click.Path(file_okay=False), default=None, help="Build this QEMU source folder instead.")
@click.option("--onto", default=None, help="Base ref instead of the tree's default.")
@click.option("--target-list", default="i386-softmmu", show_default=True, help="configure --target-list.")
@click.option("--enable-xen/--no-xen", "enable_xen", default=True, show_default=True,
              help="Debian's qemu-system-xen flavour (the Xen PV device model).")
@click.option("--configure-arg", "configure_args", multiple=True, help="Extra configure argument (repeatable).")
@click.option("--wrapper", default="ccache", show_default=True)
@click.option("--jobs", "-j", type=int, default=None)
@click.option("--force", is_flag=True, help="Run ninja even when nothing changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
@click.pass_obj
def build_qemu_cmd(obj, tree, series, worktree, onto, target_list, enable_xen, configure_args, wrapper, jobs,
                   force, as_json):
    """Configure (minimal target list) and build QEMU with ninja; cached by source and configure args.

    \b
    Example: kpt build qemu --tree qemu --target-list i386-softmmu --enable-xen
    """
    from kpatch_tool import build_qemu, pipeline

    srctree, _ = pipeline.source_for(obj.ws, tree, series=series, worktree=worktree, onto=onto, progress=say)
    res = build_qemu.build_qemu(obj.ws, srctree=srctree, tree=tree, target_list=target_list.split(","),
                                enable_xen=enable_xen, extra_args=list(configure_args), wrapper=wrapper,
                                jobs=jobs, progress=say, force=force)
    _manifest(res, f"{tree}: QEMU {res.version} {','.join(res.targets)}", as_json)


COMMANDS = [build]
