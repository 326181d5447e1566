"""`kpt series ...`, `kpt apply`, `kpt export`, `kpt check-apply`, `kpt rebase`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from kpatch_tool import series as seriesmod
from kpatch_tool.errors import UsageError


def _ui():
    from kpatch_tool.ui import console, say

    return console, say


def _print_apply(res, say) -> None:
    console, _ = _ui()
    for p in res.skipped_merged:
        say(f"skipped {p.file} ({p.subject}): already in the base")
    what = "up to date" if res.noop else f"applied {len(res.applied)} patches"
    console.print(f"{res.series}: {what} on {res.base_commit[:12]}, head {res.head_commit[:12]}")
    console.print(f"branch:   {res.branch}")
    console.print(f"worktree: {res.worktree}")


def _print_probes(console, probes: list[dict], kind: str) -> None:
    """[[upstream]] probes: is the change a series relies on in each base?"""
    if not probes:
        return
    cols = list(probes[0]["bases"])
    table = Table("series", "upstream change", *cols, title=f"[[upstream]] probes on every {kind} tree")
    for p in probes:
        table.add_row(p["series"], p["name"], *[p["bases"].get(b, "") for b in cols])
    console.print(table)


def _print_rebase(rr) -> None:
    console, _ = _ui()
    console.print(f"rebased onto {rr.onto}: {len(rr.export.files)} patches, version v{rr.version}")
    for f in rr.dropped:
        console.print(f"  dropped   {f} (already upstream)")
    for f in rr.refreshed:
        console.print(f"  refreshed {f}")
    for f in rr.export.added:
        console.print(f"  renamed/new {f}")
    if not rr.dropped and not rr.refreshed and not rr.export.added:
        console.print("  no patch changed")


@click.group("series")
def series_group():
    """The patch series under patches/: list, show, create, import."""

@series_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def series_list(obj, as_json):
    """Every series: version, trees, patch counts, depends, base per tree.

    \b
    Example: kpt series list
    """
    from rich.table import Table

    from kpatch_tool import series as sm

    console, _ = _ui()
    rows = sm.list_series(obj.ws)
    if as_json:
        click.echo(json.dumps([{
            "name": s.name, "version": s.version, "summary": s.summary, "depends": s.depends,
            "trees": {t: {"base": st.base, "patches": len(st.patches)} for t, st in s.trees.items()},
        } for s in rows], indent=1))
        return
    table = Table("series", "version", "trees (patches)", "depends", "base", "summary")
    for s in rows:
        table.add_row(s.name, f"v{s.version}",
                      ", ".join(f"{t} ({len(st.patches)})" for t, st in s.trees.items()),
                      ", ".join(s.depends) or "-",
                      ", ".join(f"{t}: {st.base or 'tree default'}" for t, st in s.trees.items()),
                      s.summary)
    console.print(table)

@series_group.command("show")
@click.argument("name")
@click.pass_obj
def series_show(obj, name):
    """Per tree: each patch with its subject, author and diffstat.

    \b
    Example: kpt series show xen-netfront-fix
    """
    from rich.text import Text

    from kpatch_tool import series as sm

    console, _ = _ui()
    s = sm.load_series(obj.ws, name)
    console.print(Text.assemble((s.name, "bold"), f" v{s.version}: {s.summary}"))
    if s.depends:
        console.print(f"depends: {', '.join(s.depends)}")
    for t, st in s.trees.items():
        console.print(Text.assemble("\n", (t, "bold"), f" (base {st.base or 'tree default'}, {len(st.patches)} patches)"))
        for p in st.patches:
            stat = sm.diffstat(p)
            add = sum(int(a) for a, _, _ in stat if a.isdigit())
            dele = sum(int(d) for _, d, _ in stat if d.isdigit())
            console.print(f"  {p.file}")
            console.print(Text.assemble(f"    {p.subject}  ", (f"({p.author})", "dim")))
            for a, d, f in stat:
                console.print(f"      {f} +{a} -{d}")
            console.print(f"      {len(stat)} files, +{add} -{dele}")
    for sm_ in s.smoke:
        console.print(f"smoke: {sm_.name} [{sm_.where}] {sm_.run}")

@series_group.command("new")
@click.argument("name")
@click.option("--tree", "trees_", multiple=True, required=True, help="A tree the series touches (repeatable).")
@click.option("--base", default=None, help="Base ref for the trees (default: each tree's own).")
@click.option("--summary", default="", help="One-line summary.")
@click.pass_obj
def series_new(obj, name, trees_, base, summary):
    """Create patches/NAME with series.toml, cover.md and an empty series file per tree.

    \b
    Example: kpt series new virtio-fix --tree linux
    """
    from kpatch_tool import series as sm

    console, _ = _ui()
    s = sm.new_series(obj.ws, name, list(trees_), summary=summary, base=base)
    console.print(f"created {s.path}")

@series_group.command("signoff")
@click.argument("name")
@click.option("--author", is_flag=True,
              help="Also become the author of the patches a placeholder identity authored (the project's own).")
@click.pass_obj
def series_signoff(obj, name, author):
    """Take series NAME over: your Signed-off-by (git config user.name/user.email) on every patch.

    A placeholder sign-off (kpt-dev@example.org, the shipped series' team
    alias) is replaced by yours; with --author you also become the author of
    the patches the placeholder authored. Patches by others keep their
    author. Running it again changes nothing.

    \b
    Example: kpt series signoff netback-per-vif --author
    """
    from kpatch_tool import signoff

    console, say = _ui()
    res = signoff.signoff_series(obj.ws, name, author=author)
    for label in res.authored:
        console.print(f"  author and sign-off  {label}", markup=False, highlight=False)
    for label in res.signed:
        if label not in res.authored:
            console.print(f"  sign-off             {label}", markup=False, highlight=False)
    for label in res.placeholder_authors:
        say(f"{label}: its author is still a placeholder; kpt mail refuses it (--author makes it yours)")
    what = "nothing to change" if not res.changed else \
        f"{len(res.signed)} signed, {len(res.authored)} now authored by you"
    console.print(f"{name}: {what} ({res.who}; {len(res.unchanged)} unchanged)", markup=False, highlight=False)

@series_group.command("import")
@click.argument("source", required=False)
@click.option("--tree", default=None, help="The tree the patches are for (with --debian-src: the package's tree).")
@click.option("--name", default=None, help="Series name (default: from the source's name; debian-TREE).")
@click.option("--base", default=None, help="Apply them on this ref (default: the tree's base).")
@click.option("--author", default=None, help="'Name <email>' for patches without a From:/Author: header (quilt).")
@click.option("--debian-src", "debian_src", default=None, metavar="PKG[=VERSION]",
              help="A Debian source package's own debian/patches over its orig tree.")
@click.pass_obj
def series_import(obj, source, tree, name, base, author, debian_src):
    """Import a quilt folder, an mbox, a folder of patches or a BASE..TIP range.

    The patches are applied on the base (without a checkout) and exported in
    kpt's normal form, so what is stored is known to apply.

    With --debian-src PKG[=VERSION] the source is Debian's own series of that
    package (VERSION: the pin of the package's tree, else the archive's newest),
    over the orig tree `upstream/UPSTREAM` (the orig tarball, no Debian patch);
    a tree of the package kpt.toml lacks is added to it, pinned.

    \b
    Example: kpt series import ~/debian/patches --tree linux --name my-fixes
    Example: kpt series import --debian-src qemu
    Example: kpt series import --debian-src linux=6.1.176-1 --tree linux-src
    """
    from kpatch_tool import export

    console, say = _ui()
    ws = obj.ws  # a kpt.toml that does not load is the first thing to say
    if debian_src is not None:
        if source or base:
            raise UsageError("--debian-src names the source and its base (the orig tree); "
                             "give no SOURCE and no --base with it")
        from kpatch_tool import debsrc

        s, res, src = debsrc.import_series(ws, debian_src, tree, name, author, progress=say)
        if src.new_tree:
            console.print(f"kpt.toml: added tree {src.tree} (debian-src:{src.package}, pinned {src.version})",
                          markup=False)
        console.print(f"imported {len(res.files)} patches of {src.package} {src.version} ({src.order_file}) "
                      f"into {s.trees[src.tree].folder}, base {src.orig['tag']}", markup=False)
        return
    if source is None:
        raise UsageError("name a SOURCE (quilt folder, mbox, folder of patches, BASE..TIP) or --debian-src PKG")
    if tree is None:
        raise UsageError("--tree is needed: the tree the patches are for")
    s, res = export.import_stack(ws, source, tree, name, base, author)
    console.print(f"imported {len(res.files)} patches into {s.trees[tree].folder}", markup=False)

@click.command("apply")
@click.argument("name")
@click.option("--tree", default=None, help="Which of the series' trees (needed if several).")
@click.option("--onto", default=None, help="Base ref (default: the series' base, else the tree's).")
@click.option("--continue", "cont", is_flag=True, help="Resume after fixing a conflict.")
@click.option("--abort", is_flag=True, help="Give up a stopped apply.")
@click.option("--force", is_flag=True, help="Rebuild our branch even if it has commits kpt did not make.")
@click.pass_obj
def apply_cmd(obj, name, tree, onto, cont, abort, force):
    """Apply the series (depends first) in a worktree on branch kpt/NAME/vN.

    Exit 3 on a conflict, with a report and the worktree left for you.

    \b
    Example: kpt apply xen-netfront-fix
    """
    from kpatch_tool import apply as ap
    from kpatch_tool import export

    console, say = _ui()
    if cont and abort:
        raise click.UsageError("--continue and --abort exclude each other")
    if abort:
        wt = ap.abort_apply(obj.ws, name, tree)
        console.print(f"aborted; {wt} is back at its base")
        return
    if cont:
        res, pend = ap.continue_apply(obj.ws, name, tree)
        _print_apply(res, say)
        if pend.get("rebase"):
            r = pend["rebase"]
            _print_rebase(export.finish_rebase(obj.ws, name, res.tree, r["onto"], r["bump"], res))
        else:
            say(f"the branch holds your fix: `kpt export {name}` writes it back to the patches")
        return
    res = ap.apply_series(obj.ws, name, tree, onto, say=say, force=force)
    _print_apply(res, say)

@click.command("export")
@click.argument("name")
@click.option("--tree", default=None)
@click.option("--from", "from_branch", default=None,
              help="Branch (or BASE..TIP range) to export (default: kpt/NAME/vN).")
@click.option("--quilt", "quilt_dir", default=None, type=click.Path(),
              help="Write the stored patches as a DEP-3 quilt folder here instead (for debian/patches).")
@click.pass_obj
def export_cmd(obj, name, tree, from_branch, quilt_dir):
    """Write the branch's commits back as the series' patch files.

    Unchanged patches stay byte-identical; files are swapped in at once.
    With --quilt DIR, the series' stored patches become a quilt folder with
    DEP-3 headers that `kpt series import DIR` reads back unchanged.

    \b
    Example: kpt export xen-netfront-fix
    Example: kpt export netback-per-vif --quilt debian/patches/netback
    """
    from kpatch_tool import export

    console, _ = _ui()
    if quilt_dir:
        from kpatch_tool import quilt
        from kpatch_tool.series import load_series

        if from_branch:
            raise UsageError("--quilt writes the stored patches; --from does not apply to it")
        st = load_series(obj.ws, name).tree(tree)
        names = quilt.export_quilt([p.path for p in st.patches], Path(quilt_dir),
                                   f"# {name}: patches for {st.name} (kpt export --quilt)\n")
        console.print(f"{name}/{st.name}: {len(names)} patches written to {quilt_dir}", markup=False)
        return
    res = export.export_series(obj.ws, name, tree, from_branch)
    console.print(f"{name}/{res.tree}: {len(res.files)} patches from {res.range} "
                  f"({len(res.unchanged)} unchanged, {len(res.changed)} changed, "
                  f"{len(res.added)} new, {len(res.removed)} removed)")
    for f in res.changed + res.added:
        console.print(f"  wrote   {f}")
    for f in res.removed:
        console.print(f"  removed {f}")
    for f in res.drafts:
        console.print(f"  left    {f} (not in the order file: yours, untouched)")

@click.command("check-apply")
@click.argument("name", required=False)
@click.option("--onto", default=None,
              help="Comma-separated refs; TREE=REF checks against another tree (default: the series' own base).")
@click.option("--tree", default=None)
@click.option("--all", "all_series", is_flag=True, help="Every shipped series: one table, series x bases.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check_apply_cmd(obj, name, onto, tree, all_series, as_json):
    """Does the series apply on these bases? No checkout; exit 3 if a patch fails.

    \b
    Example: kpt check-apply xen-netfront-fix
    Example: kpt check-apply xen-netfront-fix --onto import,linux-6.12=import
    Example: kpt check-apply --all                      (every series on every tree of its kind)
    Example: kpt check-apply --all --onto linux,linux-6.12
    """
    from rich.table import Table
    from rich.text import Text

    from kpatch_tool import checkapply
    from kpatch_tool.errors import ApplyError, UsageError

    console, _ = _ui()
    if all_series or not name:
        if name:
            raise UsageError("give a series name or --all, not both")
        if not onto and not tree:
            rows = checkapply.applicability_all(obj.ws)
            probes = [p for s in seriesmod.list_series(obj.ws)
                      for p in checkapply.upstream_probes(obj.ws, s, list(obj.ws.trees))]
            if as_json:
                click.echo(json.dumps({"series": rows, "upstream": probes}, indent=1))
                return
            for kind in ("linux", "qemu", "xen"):
                kind_rows = [r for r in rows if r["kind"] == kind]
                if kind_rows:
                    cols = list(kind_rows[0]["bases"])
                    table = Table("series", "tree", "patches", *cols, title=f"applicability on every {kind} tree")
                    for row in kind_rows:
                        table.add_row(str(row["series"]), str(row["tree"]), str(row["patches"]),
                                      *[str(row["bases"].get(b, "")) for b in cols])
                    console.print(table)
                _print_probes(console, [p for p in probes if p["kind"] == kind], kind)
            return
        bases = onto.split(",") if onto else [tree or "linux"]
        rows = checkapply.applicability(obj.ws, bases, tree or "linux")
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        table = Table("series", "patches", *bases, title=f"applicability on {tree or 'linux'} bases")
        for row in rows:
            table.add_row(row["series"], str(row["patches"]), *[row["bases"].get(b, "") for b in bases])
        console.print(table)
        return
    if not onto:

        st = seriesmod.load_series(obj.ws, name).tree(tree)
        onto = f"{st.name}={st.base}" if st.base else st.name
    reports = checkapply.check_apply(obj.ws, name, onto.split(","), tree)
    if as_json:
        click.echo(checkapply.reports_json(reports))
    else:
        colours = {"clean": "green", "offset": "green", "3way": "yellow", "fuzz": "yellow",
                   "merged": "cyan", "fails": "red"}
        for r in reports:
            table = Table("series", "patch", "result", "detail",
                          title=f"{r.base} ({r.tree} {r.commit[:12]}, {r.seconds}s)")
            for pc in r.results:
                c = colours.get(pc.status, "white")
                table.add_row(pc.series, pc.file, Text(pc.status, style=c), pc.detail)
            console.print(table)
    bad = [f"{r.base}: {pc.file}" for r in reports for pc in r.results if not pc.ok]
    if bad:
        raise ApplyError(f"{len(bad)} patch(es) would not apply: {', '.join(bad[:4])}")

@click.command("rebase")
@click.argument("name")
@click.option("--onto", required=True, help="The new base ref.")
@click.option("--tree", default=None)
@click.option("--bump", is_flag=True, help="Bump the series version (and note it in the changelog).")
@click.pass_obj
def rebase_cmd(obj, name, onto, tree, bump):
    """Move the series onto a new base: drop merged patches, export back, report.

    \b
    Example: kpt rebase xen-netfront-fix --onto debian/6.1.192-2 --bump
    """
    from kpatch_tool import export

    _, say = _ui()
    _print_rebase(export.rebase_series(obj.ws, name, onto, tree, bump, say=say))


COMMANDS = [series_group, apply_cmd, export_cmd, check_apply_cmd, rebase_cmd]
