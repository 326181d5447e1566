"""`kpt ci` (one command for the whole job, or a matrix) and `kpt report`."""

from __future__ import annotations

from pathlib import Path

import click

from kpatch_tool.ui import console
from kpatch_tool.workspace import tree_ref


def _onto(values) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for v in values:
        for part in v.split(","):
            tree, ref = tree_ref(part)
            out[tree] = ref
    return out


def _defaults(ws) -> tuple[list[str], str]:
    """The series and mode `kpt ci` runs when none are named: kpt.toml [ci]."""
    ci = ws.data.get("ci") or {}
    return list(ci.get("series", [])), ci.get("mode", "guest")



@click.command()
@click.argument("series", nargs=-1)
@click.option("--mode", type=click.Choice(["guest", "xen", "xen+domU"]), default=None,
              help="Where the checks run (default: kpt.toml [ci] mode, else guest).")
@click.option("--onto", multiple=True, metavar="TREE[=REF]", help="Base tree (and ref) to run on.")
@click.option("--profile", default=None, help="Kernel config profile (default: by mode).")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--qemu-arg", "qemu_args", multiple=True, help="Extra argument for the outer QEMU.")
@click.option("--timeout", type=float, default=None, help="Boot timeout in seconds.")
@click.option("--rerun-boot", is_flag=True, help="Boot again even if this kernel+image already booted.")
@click.option("--base-only", is_flag=True,
              help="Run the base tree alone, even when kpt.toml [ci] names default series.")
@click.option("--checks-from", "checks_from", default=None, metavar="SERIES",
              help="With --base-only: run SERIES' checks and [domU]/[ci] settings on the base, in their "
                   "on_base form (what the series fixes, seen without it).")
@click.option("--long-checks", is_flag=True,
              help="The long form of the checks that have one (KPT_LONG_CHECKS=1 in their environment): "
                   "longer measurements than the default run's.")
@click.option("--force", is_flag=True, help="Redo every stage: no cached config, build, image or boot verdict.")
@click.option("--matrix", type=click.Path(dir_okay=False), default=None, help="Run a matrix file instead.")
@click.option("--emit", type=click.Choice(["gitlab", "github"]), default=None,
              help="With --matrix: write a CI configuration instead of running (gitlab: build jobs feeding "
                   "boot jobs; github: one job per cell).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Where --emit writes.")
@click.option("--expect", type=int, default=0, help="Exit code this run is expected to end with (0).")
@click.option("--json", "as_json", is_flag=True, help="Matrix: print the summary as JSON.")
@click.option("--stop-after", type=click.Choice(["build"]), default=None,
              help="End after this stage and keep the kernel in the run folder (a CI build job).")
@click.option("--from-artifacts", "from_artifacts", type=click.Path(file_okay=False), default=None,
              help="Boot the kernel a --stop-after build run exported (its run folder, or a folder holding it); "
                   "series, base, profile and fragments are that run's, every file's hash is checked.")
@click.option("--xen-tree", "xen_tree", default=None, metavar="TREE",
              help="xen+domU: boot the hypervisor and toolstack built from this Xen tree of kpt.toml instead of "
                   "Debian's (implied when the series patches a Xen tree).")
@click.pass_obj
def ci(obj, series, mode, onto, profile, fragments, qemu_args, timeout, rerun_boot, base_only, checks_from, long_checks,
       force, matrix, emit, output, expect, as_json, stop_after, from_artifacts, xen_tree):
    """Trees -> apply -> config -> build -> image -> boot -> report, with a live view.

    Every artifact lands in out/<run-id>/ (manifest.json, logs/, .config,
    console.log, results.json, results.xml, report.html). Exit code: the
    first failing stage's (see the table in README).

    \b
    Example: kpt ci netback-per-vif --mode xen+domU
    Example: kpt ci --base-only --mode xen
    Example: kpt ci --base-only --checks-from netback-per-vif
    Example: kpt ci --matrix ci/matrix.toml
    Example: kpt ci --matrix ci/matrix.toml --emit gitlab -o kpt-child.yml
    Example: kpt ci --base-only --mode guest --stop-after build
    Example: kpt ci --from-artifacts out/build-base-linux-guest --mode guest
    Example: kpt ci --base-only --mode xen+domU --xen-tree xen
    """
    from kpatch_tool import pipeline, progress
    from kpatch_tool.errors import KptError, UsageError

    ws = obj.ws
    if emit and not matrix:
        raise UsageError("--emit needs --matrix FILE")
    if from_artifacts and (series or base_only or onto or profile or fragments or stop_after or matrix):
        raise UsageError("--from-artifacts boots the build run's kernel: its series, base, profile and fragments "
                         "are that run's (give only --mode, --qemu-arg, --timeout, --long-checks, --expect)")
    if matrix:
        _run_matrix(ws, Path(matrix), emit, output, rerun_boot, as_json)
        return
    default_series, default_mode = _defaults(ws)
    if base_only and series:
        raise UsageError("--base-only runs no series; leave out the series names")
    if checks_from and not base_only:
        raise UsageError("--checks-from runs a series' checks on the base: give --base-only")
    names = [None] if (base_only or from_artifacts) else (list(series) or default_series or [None])
    worst = None
    for name in names:
        declared_by = name or checks_from
        run_mode = mode or (pipeline.series_ci_settings(ws, declared_by).get("mode") if declared_by else None) \
            or default_mode
        rep = progress.for_terminal(pipeline.stages_for(ws, name, run_mode or "guest", xen_tree),
                                    f"kpt ci {name or 'base'} ({run_mode})")
        try:
            res = pipeline.run_ci(ws, name, mode=run_mode, onto=_onto(onto), profile=profile, timeout=timeout,
                                  reporter=rep, rerun_boot=rerun_boot, fragments=tuple(Path(f) for f in fragments),
                                  qemu_args=tuple(qemu_args), force=force, expect=expect, stop_after=stop_after,
                                  from_artifacts=Path(from_artifacts) if from_artifacts else None,
                                  checks_from=checks_from, long_checks=long_checks, xen_tree=xen_tree)
        finally:
            rep.close()
        console.print((res.run_dir / "summary.txt").read_text().rstrip() if (res.run_dir / "summary.txt").exists()
                      else f"run {res.run_id}: exit {res.exit_code}")
        console.print(f"report: {res.run_dir / 'report.html'}")
        if res.exit_code != expect and worst is None:
            worst = res
    if worst is not None:
        what = f"expected exit {expect}, got {worst.exit_code}" if expect else worst.message
        raise KptError(f"kpt ci {worst.series or 'base'} ({worst.mode}): {what} (run {worst.run_dir})",
                       exit_code=worst.exit_code or 1)

@click.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "junit", "html"]), default="text")
@click.pass_obj
def report(obj, run, fmt):
    """Print (or regenerate) the report of a run folder.

    \b
    Example: kpt report out/20261125-183000-base-linux-guest --format html
    """
    from kpatch_tool import report as reportmod
    from kpatch_tool import results

    run_dir = Path(run)
    if not run_dir.is_absolute() and not run_dir.exists():
        run_dir = obj.ws.out_dir / run
    manifest = reportmod.load_manifest(run_dir)
    rr = reportmod.merged_results(run_dir, manifest)
    if fmt == "text":
        click.echo(reportmod.text(run_dir, manifest, rr), nl=False)
    elif fmt == "json":
        click.echo(results.write_json(run_dir / results.RESULTS_JSON, rr).read_text(), nl=False)
    elif fmt == "junit":
        click.echo(results.write_junit(run_dir / results.RESULTS_XML, rr).read_text(), nl=False)
    else:
        path = run_dir / reportmod.REPORT_HTML
        path.write_text(reportmod.render_html(run_dir, manifest, rr))
        click.echo(str(path))


COMMANDS = [ci, report]


def _run_matrix(ws, path: Path, emit, output, rerun_boot: bool, as_json: bool) -> None:
    from kpatch_tool import matrix as matrixmod
    from kpatch_tool import pipeline, progress
    from kpatch_tool.errors import KptError

    cells = matrixmod.load(ws, path)
    if emit:
        text = matrixmod.emit_gitlab(ws, cells) if emit == "gitlab" else matrixmod.emit_github(ws, cells)
        if output:
            Path(output).write_text(text)
            console.print(f"wrote {output}: {len(cells)} cell(s)")
        else:
            click.echo(text)
        return
    outs = matrixmod.run(ws, cells, rerun_boot=rerun_boot,
                         reporter_factory=lambda c, i, n: progress.for_terminal(
                             pipeline.stages_for(ws, c.series, c.mode), f"cell {i}/{n}: {c.label}"))
    _print_matrix(console, outs, as_json)
    bad = [o for o in outs if not o.as_expected]
    if bad:
        raise KptError(f"{len(bad)} of {len(outs)} matrix cell(s) did not end as expected: "
                       + ", ".join(f"{o.cell.label} (exit {o.exit_code})" for o in bad),
                       exit_code=bad[0].exit_code or 1)


def _print_matrix(console, outs, as_json):
    from rich.table import Table

    from kpatch_tool import matrix as matrixmod

    if as_json:
        click.echo(matrixmod.summary_json(outs))
        return
    columns, rows = matrixmod.summary_rows(outs)
    table = Table("series", *columns, title="kpt ci matrix")
    for series, cells in rows:
        table.add_row(series, *[cells.get(c, "") for c in columns])
    console.print(table)
    for o in outs:
        why = f" - {o.message}" if o.message and not o.as_expected else ""
        console.print(f"  {o.cell.label}: {o.run_dir or 'no run folder'}{why}", markup=False)
