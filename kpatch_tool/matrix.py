"""Matrices of runs: series x bases x modes from a TOML file, run one cell after
another (a failed cell does not stop the others), or handed to an existing CI
fleet as a GitLab child pipeline / a GitHub Actions workflow.

    [matrix]                      # the cross product
    series = ["base", "netback-per-vif"]   # "base": the tree without a series
    bases  = ["linux", "linux-6.12"]       # tree names, or TREE=REF
    modes  = ["guest", "xen"]

    [[cell]]                      # extra cells, with options and an expected exit code
    series = "base"
    base = "linux"
    mode = "xen"
    profile = "xen-dom0-virtio"
    qemu_args = ["-device", "virtio-net-pci"]
    expect = 6                    # this cell must end with exit 6 (a boot failure)

    [[cell]]                      # the base with a series' checks (their on_base form):
    series = "base"               # what the series fixes, seen without it
    checks_from = "netback-per-vif"
    mode = "xen+domU"
    long_checks = true            # the long form of the checks that have one
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool.errors import KptError, UsageError
from kpatch_tool.workspace import Workspace, tree_ref


@dataclass
class Cell:
    series: str | None
    tree: str
    ref: str | None
    mode: str
    profile: str | None = None
    fragments: list[Path] = field(default_factory=list)
    qemu_args: list[str] = field(default_factory=list)
    expect: int = 0
    name: str = ""
    checks_from: str | None = None  # a base cell: run this series' checks in their on_base form
    long_checks: bool = False  # the long form of the checks that have one (kpt ci --long-checks)

    @property
    def row(self) -> str:
        """What the cell runs: a series, the base, or the base with a series' checks."""
        return self.series or (f"base+checks-of-{self.checks_from}" if self.checks_from else "base")

    @property
    def label(self) -> str:
        return self.name or f"{self.row}-{self.tree}{'@' + self.ref if self.ref else ''}-{self.mode}"

    @property
    def column(self) -> str:
        return f"{self.tree}{'@' + self.ref if self.ref else ''}/{self.mode}" + (f"/{self.profile}" if self.profile else "")

    def argv(self, ws: Workspace | None = None) -> list[str]:
        """The `kpt ci` arguments that run this cell alone (for CI fleets), fragments named
        relative to the workspace (the runner's checkout is elsewhere)."""
        return ["ci", *self.build_args(ws), "--mode", self.mode, *self.boot_args()]

    def build_args(self, ws: Workspace | None = None, profile: str | None = None) -> list[str]:
        """What selects the kernel: series (or --base-only), base, profile, fragments."""
        from kpatch_tool.pipeline import fragment_name

        # A base cell must say so: `kpt ci` without a series runs kpt.toml's default series.
        cmd = [self.series or "--base-only"]
        if self.checks_from:
            cmd += ["--checks-from", self.checks_from]
        cmd += ["--onto", f"{self.tree}={self.ref}" if self.ref else self.tree]
        if profile or self.profile:
            cmd += ["--profile", profile or self.profile]
        for f in self.fragments:
            cmd += ["--fragment", fragment_name(ws, f) if ws else str(f)]
        return cmd

    def boot_args(self) -> list[str]:
        """What shapes the boot and the verdict: QEMU arguments and the expected exit code."""
        cmd: list[str] = []
        for a in self.qemu_args:
            cmd += ["--qemu-arg", a]
        if self.long_checks:
            cmd += ["--long-checks"]
        if self.expect:
            cmd += ["--expect", str(self.expect)]
        return cmd


@dataclass
class CellOutcome:
    cell: Cell
    exit_code: int
    failed_stage: str | None
    run_dir: Path | None
    message: str = ""

    @property
    def as_expected(self) -> bool:
        return self.exit_code == self.cell.expect


def _base(ws: Workspace, spec: str, where: str) -> tuple[str, str | None]:
    tree, ref = tree_ref(spec)
    if tree not in ws.trees:
        raise UsageError(f"{where}: unknown tree '{tree}' (kpt.toml has: {', '.join(ws.trees)})")
    return tree, ref


def load(ws: Workspace, path: Path) -> list[Cell]:
    from kpatch_tool.modes import MODES
    from kpatch_tool.pipeline import default_linux_tree
    from kpatch_tool.series import list_series

    path = Path(path)
    from kpatch_tool.userfile import read_text

    try:
        data = tomllib.loads(read_text(path, "matrix file"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    known = {s.name for s in list_series(ws)}

    def check(series, mode, where):
        if series not in (None, "base") and series not in known:
            raise UsageError(f"{where}: unknown series '{series}' (known: {', '.join(sorted(known)) or 'none'})")
        if mode not in MODES:
            raise UsageError(f"{where}: unknown mode '{mode}' ({', '.join(MODES)})")

    cells: list[Cell] = []
    m = data.get("matrix") or {}
    if not isinstance(m, dict):
        raise UsageError(f"{path}: 'matrix' must be a [matrix] table")
    for key in ("series", "bases", "modes"):
        if key in m and not (isinstance(m[key], list) and all(isinstance(x, str) for x in m[key])):
            raise UsageError(f"{path}: [matrix] '{key}' must be a list of strings")
    raw_cells = data.get("cell", [])
    if not isinstance(raw_cells, list) or not all(isinstance(c, dict) for c in raw_cells):
        raise UsageError(f"{path}: 'cell' must be [[cell]] tables")
    for i, c in enumerate(raw_cells, 1):
        for key in ("series", "base", "mode", "profile", "name", "checks_from"):
            if key in c and not isinstance(c[key], str):
                raise UsageError(f"{path} [[cell]] #{i}: '{key}' must be a string")
        for key in ("fragments", "qemu_args"):
            if key in c and not (isinstance(c[key], list) and all(isinstance(x, str) for x in c[key])):
                raise UsageError(f"{path} [[cell]] #{i}: '{key}' must be a list of strings")
        if "long_checks" in c and not isinstance(c["long_checks"], bool):
            raise UsageError(f"{path} [[cell]] #{i}: 'long_checks' must be true or false")
        if "expect" in c and not (isinstance(c["expect"], int) and not isinstance(c["expect"], bool)
                                  and 0 <= c["expect"] <= 7):
            raise UsageError(f"{path} [[cell]] #{i}: 'expect' must be an exit code 0-7, not {c['expect']!r}")
    for s in m.get("series", []):
        for b in m.get("bases", []):
            for mode in m.get("modes", ["guest"]):
                check(s, mode, f"{path} [matrix]")
                tree, ref = _base(ws, b, f"{path} [matrix]")
                cells.append(Cell(None if s == "base" else s, tree, ref, mode))
    for i, c in enumerate(raw_cells, 1):
        where = f"{path} [[cell]] #{i}"
        unknown = set(c) - {"series", "base", "mode", "profile", "fragments", "qemu_args", "expect", "name",
                            "checks_from", "long_checks"}
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        s = c.get("series", "base")
        mode = c.get("mode", "guest")
        check(s, mode, where)
        checks_from = c.get("checks_from")
        if checks_from is not None:
            if s != "base":
                raise UsageError(f"{where}: checks_from runs a series' checks on the base; the cell has series '{s}'")
            check(checks_from, mode, where)
        # Without a base, the cell runs where `kpt ci SERIES` runs: the series' own Linux tree.
        tree, ref = _base(ws, c.get("base") or default_linux_tree(ws, None if s == "base" else s), where)
        frags = [(path.parent / f).resolve() for f in c.get("fragments", [])]
        for f in frags:
            if not f.is_file():
                raise UsageError(f"{where}: fragment {f} does not exist")
        cells.append(Cell(None if s == "base" else s, tree, ref, mode, c.get("profile"), frags,
                          [str(a) for a in c.get("qemu_args", [])], int(c.get("expect", 0)), c.get("name", ""),
                          checks_from, bool(c.get("long_checks", False))))
    if not cells:
        raise UsageError(f"{path}: no cells (give [matrix] series/bases/modes or [[cell]] tables)")
    return cells


def run(ws: Workspace, cells: list[Cell], *, reporter_factory=None, rerun_boot: bool = False,
        on_cell=None) -> list[CellOutcome]:
    from kpatch_tool import pipeline

    outcomes = []
    for i, cell in enumerate(cells, 1):
        rep = reporter_factory(cell, i, len(cells)) if reporter_factory else None
        try:
            res = pipeline.run_ci(ws, cell.series, mode=cell.mode, onto={cell.tree: cell.ref} if cell.ref else {cell.tree: None},
                                  profile=cell.profile, fragments=tuple(cell.fragments),
                                  qemu_args=tuple(cell.qemu_args), reporter=rep, rerun_boot=rerun_boot,
                                  label=cell.label, expect=cell.expect, checks_from=cell.checks_from,
                                  long_checks=cell.long_checks)
            stage = res.failed_stage or ("setup" if res.exit_code else None)
            out = CellOutcome(cell, res.exit_code, stage, res.run_dir, res.message)
        except KptError as exc:
            out = CellOutcome(cell, exc.exit_code, "setup", None, exc.message)
        finally:
            if rep:
                rep.close()
        outcomes.append(out)
        if on_cell:
            on_cell(out)
    return outcomes


def summary_rows(outcomes: list[CellOutcome]) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for o in outcomes:
        col = o.cell.column
        if col not in columns:
            columns.append(col)
        if o.exit_code == 0:
            cell = "pass"
        else:
            cell = f"{o.failed_stage or 'failed'} (exit {o.exit_code})"
        if o.cell.expect:
            cell += " - as expected" if o.as_expected else f" - expected exit {o.cell.expect}"
        elif o.exit_code:
            cell += " - unexpected"
        rows.setdefault(o.cell.row, {})[col] = cell
    return columns, list(rows.items())


def summary_json(outcomes: list[CellOutcome]) -> str:
    return json.dumps([{"series": o.cell.series or "base", "checks_from": o.cell.checks_from, "tree": o.cell.tree, "ref": o.cell.ref,
                        "mode": o.cell.mode, "profile": o.cell.profile, "exit_code": o.exit_code,
                        "expected": o.cell.expect, "as_expected": o.as_expected, "failed_stage": o.failed_stage,
                        "run_dir": str(o.run_dir) if o.run_dir else None, "message": o.message}
                       for o in outcomes], indent=1)


# --------------------------------------------------------------------------
# hand-off to CI fleets


# The exit codes a boot job can be expected to end with: a pass, a smoke failure, a boot failure.
# A cell expecting another (a patch that must not apply, a config that must fail...) runs its
# whole chain in one job, as `kpt ci --matrix` runs it, wherever that chain stops.
BOOT_OUTCOMES = (0, 1, 6)
PIPELINE_VARIABLES = {
    "KPT": (".venv/bin/kpt", "how a job runs kpt"),
    "KPT_SETUP": ("./scripts/setup.sh", "what a job runs first to set up the runner"),
    "KPT_CI_ARGS": ("", "extra `kpt ci` options for every job, e.g. --rerun-boot or --timeout 900"),
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _job_name(cell: Cell) -> str:
    return "kpt-" + _slug(cell.label)


def _kpt(args: list[str]) -> str:
    return "$KPT " + shlex.join(args) + " $KPT_CI_ARGS"


def _whole(cell: Cell) -> bool:
    """A cell run as one job: it expects an exit no boot gives, or its checks come from a
    series the build does not carry (--checks-from), which a boot job cannot take over."""
    return cell.expect not in BOOT_OUTCOMES or bool(cell.checks_from)


def build_groups(ws: Workspace, cells: list[Cell]) -> dict[str, tuple[list[str], list[Cell]]]:
    """Cells that boot the same kernel, by build job name: (the build job's `kpt ci` arguments, cells).

    A kernel is selected by series, base, profile (settled as a run settles it)
    and fragments; the mode only matters from the image on. Cells expecting an
    exit code no boot gives (see BOOT_OUTCOMES) are left out: each is one job.
    """
    from kpatch_tool.pipeline import settled_profile

    groups: dict[str, tuple[list[str], list[Cell]]] = {}
    for cell in cells:
        if _whole(cell):
            continue
        profile = settled_profile(ws, cell.series, cell.mode, cell.profile)
        args = ["ci", *cell.build_args(ws, profile), "--mode", cell.mode, "--stop-after", "build"]
        name = "build-" + _slug(f"{cell.series or 'base'}-{cell.tree}{'-' + cell.ref if cell.ref else ''}-{profile}")
        if cell.fragments:
            name += "-" + hashlib.sha256(" ".join(args).encode()).hexdigest()[:8]
        groups.setdefault(name, (args, []))[1].append(cell)
    return groups


def _artifacts(out: str) -> list[str]:
    return ["  artifacts:", "    when: always", "    paths:", f"      - {out}/", "    reports:",
            f"      junit: {out}/*/results.xml"]


def emit_gitlab(ws: Workspace, cells: list[Cell]) -> str:
    """A GitLab child pipeline: a build job per kernel, a boot job per cell fed by it.

    The build job runs the cell's chain up to the build and keeps the kernel,
    modules, .config and manifest in its run folder (artifacts); each boot job
    downloads them (`needs:`), checks their hashes and boots (`--from-artifacts`),
    so one build feeds every cell that boots that kernel, on any runner, in parallel.
    A cell expected to end otherwise than a boot can (BOOT_OUTCOMES) is one job of its own.
    """
    lines = ["# Generated by `kpt ci --matrix ... --emit gitlab`: build jobs feed boot jobs (needs + artifacts).",
             "# Variables a runner may set: " + "; ".join(f"{k} ({v[1]})" for k, v in PIPELINE_VARIABLES.items())
             + "; KPT_SHARED_CACHE, KPT_CCACHE_REMOTE (caches shared by runners, see README).",
             "stages: [build, boot]", "variables:"]
    lines += [f"  {k}: {json.dumps(v[0])}" for k, v in PIPELINE_VARIABLES.items()]
    lines += [""]
    for name, (args, group) in build_groups(ws, cells).items():
        out = f"out/{name}"
        lines += [f"{name}:", "  stage: build", "  variables:", f"    KPT_OUT: {out}", "  script:",
                  "    - $KPT_SETUP", f"    - {json.dumps(_kpt(args))}", *_artifacts(out), ""]
        for cell in group:
            job = _job_name(cell)
            cmd = _kpt(["ci", "--from-artifacts", out, "--mode", cell.mode, *cell.boot_args()])
            lines += [f"{job}:", "  stage: boot", "  needs:", f"    - job: {name}", "      artifacts: true",
                      "  variables:", f"    KPT_OUT: out/{job}", "  script:", "    - $KPT_SETUP",
                      f"    - {json.dumps(cmd)}", *_artifacts(f"out/{job}"), ""]
    for cell in cells:
        if _whole(cell):
            job = _job_name(cell)
            lines += [f"{job}:", "  stage: boot", "  needs: []", "  variables:", f"    KPT_OUT: out/{job}",
                      "  script:", "    - $KPT_SETUP", f"    - {json.dumps(_kpt(cell.argv(ws)))}",
                      *_artifacts(f"out/{job}"), ""]
    return "\n".join(lines)


def emit_github(ws: Workspace, cells: list[Cell]) -> str:
    """A GitHub Actions workflow: a matrix job with one entry per cell (the whole chain in each)."""
    lines = ["# Generated by `kpt ci --matrix ... --emit github`: one job per matrix cell.",
             "name: kpt matrix", "on: [push, workflow_dispatch]", "jobs:", "  kpt:",
             "    runs-on: ubuntu-latest", "    container: debian:12", "    strategy:", "      fail-fast: false",
             "      matrix:", "        include:"]
    for cell in cells:
        lines += [f"          - name: {json.dumps(_job_name(cell))}",
                  f"            cmd: {json.dumps('.venv/bin/kpt ' + shlex.join(cell.argv(ws)))}"]
    lines += ["    name: ${{ matrix.name }}", "    steps:", "      - uses: actions/checkout@v4",
              "      - run: ./scripts/setup.sh", "      - run: ${{ matrix.cmd }}",
              "      - uses: actions/upload-artifact@v4", "        if: always()", "        with:",
              "          name: ${{ matrix.name }}", "          path: out/", ""]
    return "\n".join(lines)
