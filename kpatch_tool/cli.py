"""The `kpt` command line: a thin click layer over the library.

Each command parses its options, calls one library function and prints the
result. Errors are KptError subclasses carrying the exit code of the table in
README.md; they are printed as one line (plus detail), never as a traceback
unless --debug is given.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kpatch_tool import __version__
from kpatch_tool import workspace as wsmod
from kpatch_tool.errors import KptError, PrereqError, UsageError

# Piped output (CI logs, `| less`) gets wide lines instead of rich's 80-column folding.
# No markup and no emoji codes: names, summaries, paths and messages are user
# data (`[/b]` crashed a table, `:x:` became an emoji); styles are given as
# rich Text styles instead.
console = Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False,
                      width=None if sys.stderr.isatty() else 200)


class Ctx:
    def __init__(self, root, debug):
        self._root = root
        self.debug = debug
        self._ws = None

    @property
    def ws(self) -> wsmod.Workspace:
        if self._ws is None:
            self._ws = wsmod.load(self._root)
        return self._ws


def say(msg: str) -> None:
    err_console.print(Text.assemble(("kpt:", "dim"), " ", str(msg)))


def _terminated(signum, frame):
    raise KeyboardInterrupt


class KptGroup(click.Group):
    """Maps KptError to its exit code and a one-line message."""

    def invoke(self, ctx):
        # A CI runner cancels a job with SIGTERM: clean up exactly as for Ctrl-C
        # (worktrees, locks and QEMU processes are released on the way out).
        signal.signal(signal.SIGTERM, _terminated)
        try:
            return super().invoke(ctx)
        except KptError as exc:
            debug = bool(ctx.obj and getattr(ctx.obj, "debug", False))
            if debug:
                raise
            err_console.print(Text.assemble(("kpt: error:", "bold red"), " ", str(exc.message)), soft_wrap=True)
            if exc.detail:
                err_console.print(exc.detail, markup=False, soft_wrap=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("kpt: interrupted; child processes stopped, nothing marked complete")
            ctx.exit(130)
        except OSError as exc:
            # A full disk, a read-only or immutable file: one line naming the path, like any input error.
            if bool(ctx.obj and getattr(ctx.obj, "debug", False)):
                raise
            from kpatch_tool.safefs import os_error

            err = os_error(exc, "write")
            err_console.print(Text.assemble(("kpt: error:", "bold red"), " ", err.message), soft_wrap=True)
            ctx.exit(err.exit_code)


@click.group(cls=KptGroup)
@click.option("--workspace", "-w", type=click.Path(file_okay=False), envvar="KPT_WORKSPACE",
              help="Workspace folder holding kpt.toml (default: nearest one up from here, else the project's).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="kpt")
@click.pass_context
def main(ctx, workspace, debug):
    """kpatch-tool: carry patch series across Linux, QEMU and Xen."""
    ctx.obj = Ctx(workspace, debug)
    if ctx.invoked_subcommand not in (None, "doctor") and not shutil.which("git"):
        # Every other command works on git trees (and GitPython refuses to import).
        raise PrereqError("git is not on PATH; install it: apt-get install git (`kpt doctor` checks the rest)")


# ---------------------------------------------------------------- trees

@main.group()
def tree():
    """Import and inspect the source trees named in kpt.toml."""


@tree.command("import")
@click.argument("names", nargs=-1)
@click.option("--update", is_flag=True, help="Fetch again (git URL sources).")
@click.option("--version", "version", default=None,
              help="Also import this Debian version (kept beside the pinned one; the pin does not move).")
@click.pass_obj
def tree_import(obj, names, update, version):
    """Turn the trees' sources into cached git repositories (all when none named).

    A Debian tree gets exactly its pinned version from the archive; every
    version ever imported stays in the repository as a tag (debian/VERSION).

    \b
    Example: kpt tree import linux
    Example: kpt tree import linux --version 6.1.192-3
    """
    from kpatch_tool import trees

    if version and len(names) != 1:
        raise UsageError("--version needs exactly one tree name")
    for name in names or list(obj.ws.trees):
        if version:
            e = trees.import_version(obj.ws, name, version, progress=say)
            console.print(f"{name}: {e['tag']} {e['commit'][:12]} ({e.get('suite')}, sha256 {(e.get('sha256') or '-')[:16]})",
                          markup=False)
            continue
        t = trees.import_tree(obj.ws, name, progress=say, update=update)
        console.print(f"{t.name}: {t.state} {t.ref} {t.commit[:12] if t.commit else '-'} {t.repo}", markup=False)


@tree.command("update")
@click.argument("name")
@click.option("--to", "to", default=None, help="Move to this version (default: the newest the archive offers).")
@click.option("--dry-run", is_flag=True, help="Show the table; change nothing in the workspace.")
@click.option("--bump", is_flag=True, help="Raise the version of every rebased series.")
@click.pass_obj
def tree_update(obj, name, to, dry_run, bump):
    """Move a Debian tree to a new version: rebase the series that apply, keep the rest, move the pin.

    \b
    Example: kpt tree update linux --dry-run
    Example: kpt tree update linux --to 6.1.192-3
    """
    from kpatch_tool import treeupdate

    res = treeupdate.update(obj.ws, name, to=to, dry_run=dry_run, bump=bump, say=say)
    table = Table("series", "patches", "old base", "on old", f"on {res.new_tag}", "action",
                  title=f"{name}: {res.old_version or '(unpinned)'} -> {res.new_version}"
                        + (" (dry run: nothing changed)" if dry_run else ""))
    for m in res.moves:
        table.add_row(m.series, str(m.patches), m.old_base, m.old, m.new, m.action)
    console.print(table)
    for m in res.moves:
        for f in m.failing[:3]:
            console.print(f"  {m.series}: {f}", markup=False)
    if res.pin_moved:
        console.print(f"kpt.toml: [trees.{name}] version = \"{res.new_version}\"", markup=False)
    elif not dry_run:
        console.print(f"kpt.toml: {name} already pinned to {res.new_version}", markup=False)


@tree.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tree_list(obj, as_json):
    """Name, source, pinned version, commit, state, imported versions and path of every tree.

    \b
    Example: kpt tree list
    """
    from kpatch_tool import trees

    rows = trees.list_trees(obj.ws)
    if as_json:
        click.echo(json.dumps([{"name": t.name, "source": t.source, "ref": t.ref, "commit": t.commit,
                                "path": str(t.repo), "state": t.state, "version": t.version,
                                "imported": t.imports} for t in rows], indent=1))
        return
    table = Table("tree", "source", "pinned", "ref", "commit", "state", "imported", "path")
    for t in rows:
        table.add_row(*(str(x) for x in (t.name, t.source, t.version or "-", t.ref, (t.commit or "-")[:12], t.state,
                                            ", ".join(sorted(t.imports)) or "-", str(t.repo))))
    console.print(table)


@tree.command("path")
@click.argument("name")
@click.option("--repo", is_flag=True, help="Print the git directory instead of a checkout.")
@click.option("--ref", default=None, help="Check out this ref instead of the tree's base.")
@click.pass_obj
def tree_path(obj, name, repo, ref):
    """Print a checkout of the tree's base (made once, reused), or its repository.

    \b
    Example: cd $(kpt tree path linux)
    """
    from kpatch_tool import trees

    if repo:
        click.echo(trees.get(obj.ws, name).repo)
    else:
        click.echo(trees.checkout(obj.ws, name, ref, progress=say))


# ---------------------------------------------------------------- doctor

@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--offline", is_flag=True, help="Do not ask Debian's archive what it offers.")
@click.pass_obj
def doctor(obj, as_json, offline):
    """Check the host prerequisites of every stage and the trees' pins; exit 7 if one is missing.

    \b
    Example: kpt doctor
    """
    from kpatch_tool import doctor as doc

    report = doc.run_checks(obj.ws, offline=offline)
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in report.checks], indent=1))
    else:
        table = Table("check", "status", "detail")
        for c in report.checks:
            status = Text(c.status, style={"ok": "green", "missing": "red", "warn": "yellow"}.get(c.status, ""))
            detail = Text(c.detail)
            if c.fix:
                detail.append("\nfix:", style="bold").append(f" {c.fix}")
            table.add_row(c.name, status, detail)
        console.print(table)
    if report.failed:
        missing = ", ".join(c.name for c in report.failed)
        raise KptError(f"missing host prerequisites: {missing}", exit_code=7,
                       detail="\n".join(c.fix for c in report.failed if c.fix))


# ---------------------------------------------------------------- cache

@main.group()
def cache():
    """What kpt keeps under its cache folder."""


@cache.command("clean")
@click.option("--all", "everything", is_flag=True,
              help="Also trees, downloads, worktrees and build folders (worktrees with work in them are kept).")
@click.option("--dry-run", is_flag=True, help="List what would go.")
@click.pass_obj
def cache_clean(obj, everything, dry_run):
    """Drop cached results (boot verdicts, configs, images, build stamps); --all drops everything kpt cached.

    \b
    Example: kpt cache clean
    Example: kpt cache clean --all --dry-run
    """
    from kpatch_tool import cache as cachemod

    res = cachemod.clean(obj.ws, everything=everything, dry_run=dry_run)
    for p in res.removed:
        console.print(f"{'would remove' if dry_run else 'removed'} {p}", markup=False)
    for p, why in res.kept:
        console.print(f"kept {p}: {why}", markup=False)
    console.print(f"{res.freed / 2**20:.0f} MiB {'would be ' if dry_run else ''}freed under {obj.ws.cache_dir}",
                  markup=False)


def _register_extensions() -> None:
    """Commands of the later stages live in cli_<area>.py, each as thin as this file."""
    import importlib
    import pkgutil

    import kpatch_tool

    for mod in sorted(m.name for m in pkgutil.iter_modules(kpatch_tool.__path__) if m.name.startswith("cli_")):
        importlib.import_module(f"kpatch_tool.{mod}").register(main)


_register_extensions()


def run() -> None:  # pragma: no cover - console entry for `python -m`
    sys.exit(main(standalone_mode=True))


if __name__ == "__main__":  # pragma: no cover
    run()
