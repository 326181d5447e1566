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
from kpatch_tool.errors import KptError, PrereqError

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
@click.pass_obj
def tree_import(obj, names, update):
    """Turn the trees' sources into cached git repositories (all when none named).

    \b
    Example: kpt tree import linux
    """
    from kpatch_tool import trees

    for name in names or list(obj.ws.trees):
        t = trees.import_tree(obj.ws, name, progress=say, update=update)
        console.print(f"{t.name}: {t.state} {t.ref} {t.commit[:12] if t.commit else '-'} {t.repo}")


@tree.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tree_list(obj, as_json):
    """Name, source, commit, path and state of every tree.

    \b
    Example: kpt tree list
    """
    from kpatch_tool import trees

    rows = trees.list_trees(obj.ws)
    if as_json:
        click.echo(json.dumps([{"name": t.name, "source": t.source, "ref": t.ref, "commit": t.commit,
                                "path": str(t.repo), "state": t.state, "version": t.version} for t in rows], indent=1))
        return
    table = Table("tree", "source", "ref", "commit", "state", "path")
    for t in rows:
        table.add_row(t.name, t.source, t.ref, (t.commit or "-")[:12], t.state, str(t.repo))
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
@click.pass_obj
def doctor(obj, as_json):
    """Check the host prerequisites of every stage; exit 7 if one is missing.

    \b
    Example: kpt doctor
    """
    from kpatch_tool import doctor as doc

    report = doc.run_checks(obj.ws)
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
