"""`kpt tree update`: the security-update workflow in one step.

Debian ships a new linux-source roughly monthly. Moving to it means: fetch the
new version, see which series still apply, rebase those, keep the others
working on the old version, and move the pin. Each of those is an existing
piece (trees.import_version, checkapply.check_apply, export.rebase_series);
this module only orders them and decides per series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tomlkit

from kpatch_tool import apt, checkapply, safefs, trees
from kpatch_tool import series as seriesmod
from kpatch_tool.errors import UsageError
from kpatch_tool.workspace import WORKSPACE_FILE, Workspace


@dataclass
class SeriesMove:
    series: str
    patches: int
    old_base: str
    old: str  # check-apply summary on the old base
    new: str  # ... and on the new one
    action: str  # rebased, would rebase, base moved, kept on OLD, would keep on OLD
    failing: list[str] = field(default_factory=list)  # "0003-x.patch: hunk ..." lines


@dataclass
class UpdateResult:
    tree: str
    old_version: str | None
    new_version: str
    new_tag: str
    dry_run: bool
    moves: list[SeriesMove]
    pin_moved: bool


def _series_on(ws: Workspace, tree: str) -> list[seriesmod.Series]:
    """Series with a [trees.<tree>] entry, depends first (a rebase applies what it depends on)."""
    out: list[seriesmod.Series] = []
    seen: set[str] = set()
    for s in seriesmod.list_series(ws):
        for dep in seriesmod.resolve_depends(ws, s.name):
            if dep.name not in seen and tree in dep.trees:
                seen.add(dep.name)
                out.append(dep)
    return out


def _failing(report: checkapply.BaseReport) -> list[str]:
    return [f"{r.file}: {r.detail}".strip() for r in report.results if not r.ok]


def update(ws: Workspace, name: str, *, to: str | None = None, dry_run: bool = False, bump: bool = False,
           say=None) -> UpdateResult:
    from kpatch_tool import export

    say = say or (lambda msg: None)
    spec = ws.tree(name)
    kind = trees.source_kind(spec.source)
    if kind not in ("debian", "debian-src"):
        raise UsageError(f"tree '{name}': {spec.source} is not a Debian package; `kpt tree import {name} --update` fetches a git source")
    package = spec.source.split(":", 1)[1]
    arch = trees.archive(ws, name)
    arch.update(force=True, progress=say)
    offers = arch.offers(package, source=kind == "debian-src")
    if not offers:
        raise UsageError(f"tree '{name}': the archive ({', '.join(arch.suites)}) offers no {package}")
    if to:
        match = [o for o in offers if to in (o.version, apt.noepoch(o.version))]
        if not match:
            raise apt.VersionGone(package, to, offers, source=kind == "debian-src")
        target = match[0].version
    else:
        target = offers[0].version
    old_version = spec.version
    entry = trees.import_version(ws, name, target, progress=say)
    new_tag = entry["tag"]
    old_tag = trees.version_tag(old_version) if old_version else None

    moves: list[SeriesMove] = []
    for s in _series_on(ws, name):
        st = s.trees[name]
        if (st.base or "").startswith("upstream/"):
            # A package's own series over its orig tree (--debian-src): the new version's
            # patches are Debian's to give, not this series' to be rebased onto (they'd all be "merged").
            moves.append(SeriesMove(s.name, len(st.patches), st.base or "", "-", "-",
                                    f"kept on {st.base} (`kpt series import --debian-src {package}={target} "
                                    f"--name NEW` makes the new version's series)"))
            continue
        old_base = st.base or old_tag or trees.IMPORT_BRANCH
        bases = [f"{name}={old_base}", f"{name}={new_tag}"]
        say(f"check-apply {s.name} on {old_base} and {new_tag}")
        reports = checkapply.check_apply(ws, s.name, bases, name)
        old_r, new_r = reports[0], reports[1]
        mv = SeriesMove(s.name, len(st.patches), old_base, checkapply.summarise(old_r), checkapply.summarise(new_r),
                        "", _failing(new_r))
        if old_base == new_tag:
            mv.action = "already there"
        elif new_r.ok:
            if dry_run:
                mv.action = "would rebase" if st.patches else "would move its base"
            elif st.patches:
                say(f"rebasing {s.name} onto {new_tag}")
                export.rebase_series(ws, s.name, new_tag, name, bump, say=say)
                mv.action = "rebased"
            else:
                seriesmod.update_toml(s, bases={name: new_tag})
                mv.action = "base moved"
        else:
            # It keeps working where it is: a series that followed the pin now names its base.
            if dry_run:
                mv.action = f"would keep {old_base}"
            else:
                if not st.base:
                    seriesmod.update_toml(s, bases={name: old_base})
                mv.action = f"kept on {old_base}"
        moves.append(mv)

    pin_moved = False
    if not dry_run and (old_version is None or apt.noepoch(old_version) != apt.noepoch(target)):
        set_pin(ws, name, target)
        trees.import_tree(ws, name)  # the `import` branch follows the pin
        pin_moved = True
    return UpdateResult(name, old_version, target, new_tag, dry_run, moves, pin_moved)


def set_pin(ws: Workspace, name: str, version: str) -> None:
    """Write [trees.<name>] version in kpt.toml, keeping the file's comments and layout."""
    path = ws.root / WORKSPACE_FILE
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    table = doc.get("trees", {}).get(name)
    if table is None:
        raise UsageError(f"{path}: no [trees.{name}] to pin")
    table["version"] = version
    safefs.replace_file(path, tomlkit.dumps(doc).encode("utf-8"))
    ws.trees[name].version = version


def add_tree(ws: Workspace, spec) -> None:
    """Add [trees.<name>] (source, kind, version) to kpt.toml, keeping the file's comments and layout."""
    path = ws.root / WORKSPACE_FILE
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    if "trees" not in doc:
        doc["trees"] = tomlkit.table(is_super_table=True)
    if spec.name in doc["trees"]:
        raise UsageError(f"{path}: [trees.{spec.name}] exists already")
    table = tomlkit.table()
    table["source"] = spec.source
    table["kind"] = spec.kind
    if spec.version:
        table["version"] = spec.version
    doc["trees"][spec.name] = table
    safefs.replace_file(path, tomlkit.dumps(doc).encode("utf-8"))
    ws.trees[spec.name] = spec
