"""QEMU builds: configure with a minimal target list, then ninja, cached.

The default is Debian's qemu-system-xen flavour (qemu-7.2/debian/rules,
configure-xen): `--enable-xen --target-list=i386-softmmu --disable-tcg
--disable-kvm --without-default-features`, the Xen PV device model, minus
Debian's optional extras (spice, vnc, libusb, virtfs) that a smoke test does
not need. Debian's source has no bundled meson. A tree without pythondeps.toml
(QEMU up to 8.0: 7.2) is configured with the host's (`--meson=meson`); a tree
with one (8.1 and later: 10.2) configures through mkvenv, which takes meson from
the python it is given: the host's python3 when the host's meson is `accepted`,
else a venv of kpt's own with the tree's `installed` meson from PyPI (pytools).

The build folder is a direct child of the source worktree, named after a hash
of the configure arguments: meson writes compiler command lines relative to it
(`../hw/...`), so they are the same in every worktree and ccache hits across
them. A `.gitignore` of `*` in it keeps it out of git's view (QEMU ignores only
`/build/`). Whether anything changed is decided before ninja is started: a
stamp of (source state, configure args, compiler), written after a good build.

`build_each_qemu` is `kpt build --each SERIES --tree qemu`: the QEMU side of
build.build_each, ninja after every patch in a bisect worktree of our own.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool import proc, pytools
from kpatch_tool.build import Artifact, Built
from kpatch_tool.errors import BuildError, KptError, UsageError
from kpatch_tool.workspace import Workspace

CONFIGURED = "kpt-configured.json"
NINJA_RE = re.compile(r"^\[(?P<n>\d+)/(?P<m>\d+)\] (?P<what>.*)$")
# meson's descriptions of compile edges: `Compiling C object libcommon.fa.p/hw_xen_xen-bus.c.o`
COMPILE_RE = re.compile(r"^Compiling .*?object (?P<obj>\S+)$")
# gcc colours its diagnostics when meson's b_colorout says `always`
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[mK]")
# meson's own errors: `../meson.build:2768:2: ERROR: Problem encountered: fdt not available ...`
MESON_ERROR_RE = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?:\d+:)? ERROR: (?P<msg>.*)$")
XEN_ARGS = ["--enable-xen", "--disable-tcg", "--disable-kvm"]
COMMON_ARGS = ["--without-default-features", "--disable-docs", "--disable-tools", "--disable-install-blobs"]


@dataclass(frozen=True)
class MesonSetup:
    """How configure finds meson and the subprojects, and what of it shapes the build.

    sources: nothing is fetched (7.2: no submodule update; 8.1+: no wrap or
    PyPI download by configure itself; and no -Werror, which a git checkout
    turns on and Debian's tarball builds do not have: 10.2 warns about its
    TPM helpers when TPM is off, and --each compares warnings per patch);
    meson: `--meson=` or `--python=`;
    identity: the venv's meson version and wheel hash, or {} for the host's
    (whose Debian version the host_tools part of the identity has).
    """

    sources: tuple[str, ...] = ("--with-git-submodules=ignore",)
    meson: str = "--meson=meson"
    identity: dict = field(default_factory=dict)


LEGACY = MesonSetup()
MKVENV_SOURCES = ("--disable-download", "--disable-werror")


@dataclass(kw_only=True)
class QemuBuildResult(Built):
    version: str
    targets: list[str]
    configure_args: list[str]

    @property
    def binaries(self) -> list[Path]:
        return [self.build_dir / binary_for(t) for t in self.targets]

    @property
    def qemu_system_i386(self) -> Path:
        return self.build_dir / "qemu-system-i386"


def binary_for(target: str) -> str:
    """configure's target name to the binary ninja builds (i386-softmmu -> qemu-system-i386)."""
    arch, _, kind = target.partition("-")
    if kind == "softmmu":
        return f"qemu-system-{arch}"
    if kind in ("linux-user", "bsd-user"):
        return f"qemu-{arch}"
    raise UsageError(f"QEMU target '{target}': expected <arch>-softmmu, <arch>-linux-user or <arch>-bsd-user")


def configure_args(target_list: list[str], *, enable_xen: bool = True, wrapper: str | None = "ccache",
                   extra: list[str] = (), setup: MesonSetup = LEGACY) -> list[str]:
    """The configure command line (after ./configure), the build's identity."""
    if not target_list:
        raise UsageError("QEMU: an empty --target-list builds nothing")
    for t in target_list:
        binary_for(t)
    if enable_xen and any(not t.endswith("-softmmu") for t in target_list):
        raise UsageError("QEMU: --enable-xen builds system emulators only (<arch>-softmmu targets)")
    args = [*(XEN_ARGS if enable_xen else []), f"--target-list={','.join(target_list)}", *COMMON_ARGS,
            *setup.sources, f"--cc={buildmod.cc_for(wrapper)}", setup.meson]
    return args + list(extra)


def meson_setup(ws: Workspace, srctree: Path, progress=None) -> MesonSetup:
    """The meson this tree's configure is to use: the host's, or kpt's venv of the tree's pinned one."""
    req = pytools.requirement(Path(srctree))
    if req is None:
        return LEGACY
    host = pytools.host_version("meson")
    if host and pytools.satisfies(host, req.accepted):
        python = proc.which("python3") or "python3"
        return MesonSetup(sources=MKVENV_SOURCES, meson=f"--python={python}")
    env = pytools.ensure(ws.cache_dir, req, progress=progress)
    return MesonSetup(sources=MKVENV_SOURCES, meson=f"--python={env.python}", identity=env.identity())


def _identity(args: list[str], setup: MesonSetup) -> dict:
    return {"configure": args, **({"meson": setup.identity} if setup.identity else {})}


def qemu_version(srctree: Path) -> str:
    try:
        return (Path(srctree) / "VERSION").read_text().strip()
    except OSError:
        return ""


class NinjaWatcher:
    """Follows ninja's `[N/M] ...` lines: a percentage, warnings, first errors."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress
        self.done = 0
        self.total = 0
        self.last = ""
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.error_context: list[str] = []
        # Warnings by the ninja edge that printed them. Without a smart terminal
        # ninja prints `[N/M] description` when an edge finishes, then that
        # command's whole output: what follows a status line is that edge's.
        self.units: dict[str, list[str]] = {}
        self.compiled: list[str] = []
        self._unit = ""
        self._last_report = 0.0
        self._start = time.monotonic()

    @property
    def percent(self) -> int | None:
        return 100 * self.done // self.total if self.total else None

    def __call__(self, line: str) -> None:
        line = ANSI_RE.sub("", line)
        m = NINJA_RE.match(line)
        if m:
            self.done, self.total = int(m.group("n")), int(m.group("m"))
            self.last = m.group("what")
            c = COMPILE_RE.match(self.last)
            self._unit = c.group("obj") if c else self.last
            if c:
                # Recompiled: whatever it warned about before is replaced by what follows.
                self.compiled.append(self._unit)
                self.units[self._unit] = []
        elif buildmod.WARN_RE.match(line):
            self.warnings.append(line.strip())
            self.units.setdefault(self._unit, []).append(line.strip())
        elif (buildmod.ERROR_RE.match(line) or MESON_ERROR_RE.match(line)
              or line.startswith(("FAILED:", "ERROR:", "ninja: error"))):
            if len(self.error_context) < 40:
                self.error_context.append(line)
            if len(self.errors) < 10:
                self.errors.append(line.strip())
        now = time.monotonic()
        if self.progress and m and (now - self._last_report > 1.0 or self.done == self.total):
            self._last_report = now
            self.progress(f"ninja {self.percent}% [{self.done}/{self.total}] [{now - self._start:.0f}s] {self.last}")


def _fail(w: NinjaWatcher, res: proc.ProcResult, log: Path, what: str) -> BuildError:
    if res.timed_out:
        msg = f"{what}: timed out after {res.duration:.0f}s (log {log})"
    else:
        first = next((e for e in w.errors if buildmod.ERROR_RE.match(e) or MESON_ERROR_RE.match(e)), None) \
            or next((e for e in w.errors if not e.startswith("FAILED:")), None) or (w.errors[0] if w.errors else None)
        m = buildmod.ERROR_RE.match(first or "") or MESON_ERROR_RE.match(first or "")
        if m:
            msg = f"{what}: {m.group('file')}:{m.group('line')}: {m.group('msg')} (log {log})"
        elif first:
            msg = f"{what}: {first} (log {log})"
        else:
            msg = f"{what}: exited {res.returncode} (log {log})"
    detail = w.error_context[:15] or res.stdout.splitlines()[-15:]
    return BuildError(msg, detail="\n".join(detail))


def _artifacts(build_dir: Path, targets: list[str]) -> dict[str, Artifact]:
    out = {}
    for t in targets:
        p = build_dir / binary_for(t)
        if p.is_file():
            out[p.name] = Artifact(str(p), p.stat().st_size, buildmod.sha256_file(p))
    return out


def build_dir_for(ws: Workspace, tree: str, srctree: Path, args: list[str]) -> Path:
    key = hashlib.sha256("\0".join(args).encode()).hexdigest()
    return buildmod.build_dir_for(ws, tree, srctree, "qemu", key)


def build_qemu(ws: Workspace, *, srctree: Path, tree: str = "qemu", target_list: list[str] = ("i386-softmmu",),
               enable_xen: bool = True, extra_args: list[str] = (), wrapper: str | None = "ccache",
               jobs: int | None = None, progress=None, force: bool = False,
               timeout: float = 4 * 3600) -> QemuBuildResult:
    """configure + ninja for the target list; a rerun with nothing changed starts neither."""
    srctree = Path(srctree)
    if not (srctree / "configure").is_file() or not (srctree / "meson.build").is_file():
        raise UsageError(f"{srctree}: not a QEMU source tree (no configure and meson.build)")
    targets = list(target_list)
    setup = meson_setup(ws, srctree, progress)
    args = configure_args(targets, enable_xen=enable_xen, wrapper=wrapper, extra=list(extra_args), setup=setup)
    ident = _identity(args, setup)
    build_dir = build_dir_for(ws, tree, srctree, args)
    _ours(build_dir, srctree)
    binaries = [build_dir / binary_for(t) for t in targets]

    def run(stamp: dict | None, log: Path) -> buildmod.Ran:
        env = buildmod.make_env(wrapper)
        _configure(srctree, build_dir, args, ident, env=env, log=log, tree=tree, progress=progress)
        res, w = _ninja(build_dir, binaries, env=env, jobs=jobs, log=log, timeout=timeout, progress=progress)
        if not res.ok:
            raise _fail(w, res, log, f"build of {tree} failed")
        missing = [b for b in binaries if not b.is_file()]
        if missing:
            raise KptError(f"build of {tree}: ninja succeeded but {missing[0]} is missing (log {log})")
        return buildmod.Ran(w.warnings, w.total)

    backend = buildmod.Backend(tree, srctree, build_dir, ident, binaries, run,
                               lambda: _artifacts(build_dir, targets), wrapper, ("config", "qemu-build"))
    built, _ = buildmod.cached_build(backend, force=force, progress=progress)
    return QemuBuildResult(**vars(built), version=qemu_version(srctree), targets=targets, configure_args=args)


def _configure(srctree: Path, build_dir: Path, args: list[str], ident: dict, *, env: dict[str, str], log: Path,
               tree: str, progress=None) -> bool:
    """Run configure in build_dir unless it ran there with args (and that meson) already; True when it ran."""
    configured = _read_json(build_dir / CONFIGURED)
    if configured == ident and (build_dir / "build.ninja").is_file():
        return False
    (build_dir / CONFIGURED).unlink(missing_ok=True)
    if progress:
        progress(f"configuring QEMU {qemu_version(srctree)} in {build_dir}")
    w = NinjaWatcher(None)
    try:
        res = proc.stream([str(Path(srctree).resolve() / "configure"), *args], cwd=build_dir, env=env,
                          on_line=w, log=log, timeout=1800)
    except OSError as exc:
        raise KptError(f"cannot run QEMU's configure in {build_dir}: {exc}") from None
    if not res.ok:
        raise _fail(w, res, log, f"configure of {tree} failed")
    (build_dir / CONFIGURED).write_text(json.dumps(ident))
    return True


def _ninja(build_dir: Path, binaries: list[Path], *, env: dict[str, str], jobs: int | None, log: Path,
           timeout: float, progress=None) -> tuple[proc.ProcResult, NinjaWatcher]:
    w = NinjaWatcher(progress)
    cmd = ["ninja", "-C", str(build_dir), f"-j{jobs or buildmod.cores()}", *(b.name for b in binaries)]
    try:
        res = proc.stream(cmd, on_line=w, env=env, log=log, timeout=timeout)
    except OSError as exc:
        raise KptError(f"cannot run ninja in {build_dir}: {exc}") from None
    return res, w


def _ours(build_dir: Path, srctree: Path) -> None:
    """A build folder inside a source worktree hides itself from git."""
    build_dir.mkdir(parents=True, exist_ok=True)
    if Path(srctree).resolve() in build_dir.resolve().parents and not (build_dir / ".gitignore").exists():
        (build_dir / ".gitignore").write_text("# kpt build folder\n*\n")


# --------------------------------------------------------------------------
# warnings per patch (kpt build --each SERIES --tree qemu)


class UnitWarningLedger(buildmod.WarningLedger):
    """build.WarningLedger keyed by compilation unit (ninja's object) instead of warning file.

    Ninja says which object printed a warning, and which objects a build
    recompiled: a recompiled object's warnings are replaced by what it said
    this time, every other object keeps its own. A warning counts as new when
    no object had it before (a header's warning seen again from another file
    is not new) and as fixed when no object has it any more. Warnings compare
    as file + message: a patch adding lines above one moves its line number.
    """

    def update_units(self, units: dict[str, list[str]]) -> tuple[set[str], set[str]]:
        before = self.all()
        for unit, warnings in units.items():
            normed = {buildmod._norm_warning(w) for w in warnings}
            if normed:
                self.by_file[unit] = normed
            else:
                self.by_file.pop(unit, None)
        after = self.all()
        return after - before, before - after


def build_each_qemu(ws: Workspace, *, worktree: Path, base: str, tree: str = "qemu",
                    target_list: list[str] = ("i386-softmmu",), enable_xen: bool = True,
                    wrapper: str | None = "ccache", jobs: int | None = None, progress=None,
                    timeout: float = 4 * 3600) -> list[buildmod.EachStep]:
    """ninja after base and after each commit base..HEAD of worktree, in a worktree of our own.

    Configure runs once, in a build folder that is a child of our bisect
    worktree (ccache hits what build_qemu built from the series' worktree);
    each later step is an incremental ninja, meson regenerating by itself when
    a patch touches a meson.build. The first failing patch ends the run:
    later ones build on a broken one.
    """
    worktree = Path(worktree)
    targets = list(target_list)
    commits = buildmod.each_commits(worktree, base)
    env = buildmod.make_env(wrapper)
    with buildmod.build_lock(progress):
        each_dir = buildmod.each_worktree(ws, tree, worktree, base)
        if not (each_dir / "configure").is_file() or not (each_dir / "meson.build").is_file():
            raise UsageError(f"{worktree}: not a QEMU source tree at {base[:12]} (no configure and meson.build)")
        setup = meson_setup(ws, each_dir, progress)
        args = configure_args(targets, enable_xen=enable_xen, wrapper=wrapper, setup=setup)
        build_dir = build_dir_for(ws, tree, each_dir, args)
        _ours(build_dir, each_dir)
        binaries = [build_dir / binary_for(t) for t in targets]
        log = build_dir / "each.log"
        log.write_text("")
        _configure(each_dir, build_dir, args, _identity(args, setup), env=env, log=log, tree=tree,
                   progress=progress)
        if progress:
            progress(f"building the base {base[:12]} first")

        def ninja():
            return _ninja(build_dir, binaries, env=env, jobs=jobs, log=log, timeout=timeout, progress=progress)

        res, w = ninja()
        if not res.ok:
            raise _fail(w, res, log, f"the base {base[:12]} does not build")
        ledger = UnitWarningLedger()
        ledger.update_units(w.units)
        return buildmod.run_each(each_dir, commits, ninja, lambda w_, r, what: _fail(w_, r, log, what),
                                 lambda w_: ledger.update_units(w_.units), progress)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
