"""`kpt config`: make a validated kernel .config; explain a symbol; diff two configs."""

from __future__ import annotations

from pathlib import Path

import click


class _ProfileGroup(click.Group):
    """`kpt config PROFILE ...` runs the hidden `make` command; subcommands stay."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["make", *args]
        return super().parse_args(ctx, args)


def _srctree(obj, tree: str, srctree: str | None) -> Path:
    if srctree:
        return Path(srctree)
    from kpatch_tool import trees
    from kpatch_tool.ui import say

    return trees.checkout(obj.ws, tree, progress=say)


@click.group("config", cls=_ProfileGroup, invoke_without_command=False)
def config():
    """Kernel .config from a profile or base + fragments, checked value by value.

    `kpt config PROFILE` (or `kpt config --base B --fragment F`) evaluates the
    base and fragments with kconfiglib against the tree's Kconfig, writes the
    .config, fails (exit 4) with an explanation for every requested value that
    did not take, and checks the result is a fixed point of `make olddefconfig`.

    \b
    Example: kpt config guest --tree linux
    """

@config.command("make")
@click.argument("profile", required=False)
@click.option("--base", default=None, help="tinyconfig, allnoconfig, defconfig or a .config file (instead of a profile).")
@click.option("--fragment", "-f", "fragments", multiple=True, type=click.Path(dir_okay=False), help="Extra fragment (repeatable).")
@click.option("--series", "series", multiple=True, help="Add the `fragments` of patches/<S>/series.toml (repeatable).")
@click.option("--tree", default="linux", show_default=True, help="Tree (kpt.toml) whose base checkout is used.")
@click.option("--srctree", type=click.Path(file_okay=False, exists=True), help="Use this source folder (e.g. a worktree) instead.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Where to write .config (default out/config/<name>.config).")
@click.option("--cross-check/--no-cross-check", default=True, show_default=True,
              help="Check the .config is a fixed point of the kernel's `make olddefconfig`.")
@click.pass_obj
def config_make(obj, profile, base, fragments, series, tree, srctree, output, cross_check):
    """Write a validated .config (the default action of `kpt config`).

    \b
    Example: kpt config xen-dom0 --fragment my.config -o /tmp/dom0.config
    """
    from kpatch_tool import kconfig
    from kpatch_tool.ui import console, say
    from kpatch_tool.errors import ConfigError, UsageError

    ws = obj.ws
    if profile and base:
        raise UsageError("give a PROFILE or --base, not both")
    if not profile and not base:
        names = ", ".join(sorted(kconfig.load_profiles(ws)))
        raise UsageError(f"name a profile ({names}) or give --base")
    if profile:
        base_name, frags = kconfig.profile_fragments(ws, profile, series)
        name = profile
    else:
        base_name, frags = base, []
        for s in series:
            frags += kconfig.series_fragments(ws, s)
        name = Path(base).stem if Path(base).is_file() else base
    frags += [Path(f) for f in fragments]
    src = _srctree(obj, tree, srctree)
    say(f"evaluating {base_name} + {len(frags)} fragment(s) against {src}")
    result = kconfig.evaluate(src, base_name, frags)
    out = Path(output) if output else ws.out_dir / "config" / f"{name}.config"
    kconfig.write_config(result, out)
    for w in result.warnings:
        say(f"warning: {w}")
    if result.problems:
        raise ConfigError(f"{len(result.problems)} requested value(s) did not take; .config written to {out}",
                          detail=result.report())
    checked = "not cross-checked"
    if cross_check:
        log = out.with_name(out.name + ".olddefconfig.log")
        log.unlink(missing_ok=True)
        diff = kconfig.cross_check(src, out, log=log)
        if diff:
            raise ConfigError(f"{out} is not a fixed point of `make olddefconfig`: kpt's evaluation differs from kbuild's",
                              detail="\n".join(diff))
        checked = "fixed point of make olddefconfig"
    n_set = sum(1 for line in kconfig.normalise(result.config_text) if not line.startswith("#"))
    console.print(f"{out}")
    say(f"{n_set} symbols set, {len(result.assignments)} requests met, {checked}, hash {result.config_hash[:12]}")

@config.command("explain")
@click.argument("symbol")
@click.option("--tree", default="linux", show_default=True)
@click.option("--srctree", type=click.Path(file_okay=False, exists=True))
@click.option("--profile", default=None, help="Values under this profile (default: defconfig).")
@click.option("--base", default=None, help="Values under this base instead.")
@click.option("--fragment", "-f", "fragments", multiple=True, type=click.Path(dir_okay=False))
@click.pass_obj
def config_explain(obj, symbol, tree, srctree, profile, base, fragments):
    """Type, prompt, where defined, dependencies, selects and the value with why.

    \b
    Example: kpt config explain XEN_DOM0 --profile xen-dom0
    """
    from kpatch_tool import kconfig
    from kpatch_tool.ui import console

    if profile:
        base_name, frags = kconfig.profile_fragments(obj.ws, profile)
        under = f"profile {profile}"
    else:
        base_name, frags = base or "defconfig", []
        under = base_name
    frags += [Path(f) for f in fragments]
    info = kconfig.explain(_srctree(obj, tree, srctree), symbol, base_name, frags, under=under)
    console.print(info.render(), markup=False, soft_wrap=True)

@config.command("diff")
@click.argument("a", type=click.Path(dir_okay=False, exists=True))
@click.argument("b", type=click.Path(dir_okay=False, exists=True))
@click.pass_obj
def config_diff(obj, a, b):
    """Symbol-level difference of two .config files (absent shown as -).

    \b
    Example: kpt config diff out/config/guest.config out/config/xen-dom0.config
    """
    from kpatch_tool import kconfig
    from kpatch_tool.ui import console

    from kpatch_tool.userfile import read_text

    rows = kconfig.diff_configs(read_text(a, ".config"), read_text(b, ".config"))
    for name, va, vb in rows:
        console.print(f"CONFIG_{name}: {va if va is not None else '-'} -> {vb if vb is not None else '-'}",
                      markup=False)
    console.print(f"{len(rows)} symbol(s) differ", style="dim")


COMMANDS = [config]
