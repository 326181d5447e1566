"""Builds: Linux (out of tree, O=), one module against a built kernel, per-patch.

The build folder is keyed by (source tree, config hash). Whether anything
changed is decided before make is started: a stamp written after a successful
build records the source state (commit + dirty files), the config hash, the
compiler and the wrapper. A no-op rerun reads the stamp and returns; make's
own "nothing to do" walk of the tree would cost seconds. The stamp is removed
before make starts, so an interrupted build is never trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpatch_tool import proc, safefs, sharedcache
from kpatch_tool.sharedcache import FleetSettings
from kpatch_tool.safefs import sha256_file
from kpatch_tool.errors import BuildError, KptError, PrereqError, UsageError
from kpatch_tool.workspace import Workspace

STAMP = "kpt-build.json"
# Bump when what a build folder holds changes meaning (modules installed differently, ...).
KPT_BUILD_FORMAT = 2
DEFAULT_LOCK = "/tmp/kpt-kbuild.lock"
ERROR_RE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?:(?P<col>\d+):)? (?:fatal )?error: (?P<msg>.*)$")
WARN_RE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?:(?P<col>\d+):)? warning: (?P<msg>.*)$")
STEP_RE = re.compile(r"^\s{2}(?P<step>[A-Z0-9_\[\]]+)\s+(?P<target>\S+)")
COMPILE_STEPS = {"CC", "AS", "CC [M]", "LD", "LD [M]", "AR", "HOSTCC", "CPP"}


class PathsAsStrings:
    """to_json() for result dataclasses: Path fields become strings."""

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class Artifact:
    path: str
    size: int
    sha256: str


@dataclass(kw_only=True)
class Built(PathsAsStrings):
    """What every backend's build gives (Linux, QEMU, Xen add their own fields)."""

    tree: str
    srctree: Path
    build_dir: Path
    cached: bool
    duration: float
    log: Path
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    # What the stamp keys on (source, config, host tools): later caches key on it too.
    identity: dict = field(default_factory=dict)
    # The shared cache's tar this build was fetched from (another runner built it), or None.
    fetched_from: str | None = None
    # ccache's outcome for this build's compilations (sharedcache.ccache_stats), None when make did not run.
    ccache: dict | None = None


@dataclass
class Ran:
    """What a backend's build step reports to the shared routine."""

    warnings: list[str]
    steps: int = 0
    extra: dict = field(default_factory=dict)  # more stamp fields (a version read after the build, ...)


@dataclass
class Backend:
    """One kind of build: the shared routine asks it only what differs.

    identity: what besides the source state and the host's tools shapes the output
    (config hash, configure arguments...); outputs: files that must exist for a
    cached result to count; run: the build itself, under the machine-wide lock,
    given the previous stamp (for progress estimates) and the log; artifacts: the
    files to record with their hashes.
    """

    tree: str
    srctree: Path
    build_dir: Path
    identity: dict
    outputs: list[Path]
    run: Callable[[dict | None, Path], Ran]
    artifacts: Callable[[], dict[str, Artifact]]
    wrapper: str | None = "ccache"
    # prereqs stages whose tools the build needs (checked first) and whose versions it keys on
    stages: tuple[str, ...] = ("build",)
    # Files (relative to build_dir) another runner needs to reuse this build; empty: not shared.
    shared_files: tuple[str, ...] = ()
    fleet: FleetSettings = FleetSettings()
    # The output depends on the source's content only, not its commit (see source_state).
    portable_source: bool = True


def read_stamp(build_dir: Path) -> dict | None:
    try:
        data = json.loads((build_dir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_build(b: Backend, *, force: bool = False, progress=None) -> tuple[Built, dict]:
    """Build unless a stamp says this exact build is there; the one home of build caching.

    The stamp is removed before the build starts and written (atomically) only
    after it succeeded, so an interrupted build is never trusted. Its identity
    covers the source state, the backend's identity, the compiler and the
    host's build tools, and kpt's build format: a change to any of them rebuilds.
    With a shared cache (sharedcache.py) a local miss first looks for the same
    identity built by another runner, and a finished build is published there.
    """
    from kpatch_tool import prereqs

    # Before anything: a missing tool (depmod, ...) stops the build, never a degraded artifact.
    for stage in b.stages:
        prereqs.require(stage)
    t0 = time.monotonic()
    b.build_dir.mkdir(parents=True, exist_ok=True)
    log = b.build_dir / "build.log"
    state = source_state(b.srctree)
    ident = {**b.identity, "source": state, "compiler": compiler_id(b.wrapper),
             "srctree": str(Path(b.srctree).resolve()), "host": host_tools(b.stages), "kpt": KPT_BUILD_FORMAT}
    shared = b.fleet.shared_cache if (b.shared_files and state) else None
    # The shared name: the same identity with the source's content (its tree), not its commit.
    shared_key = sharedcache.key({**ident, "source": source_state(b.srctree, portable=b.portable_source)}) \
        if shared else ""
    stamp = read_stamp(b.build_dir)
    if not force and state and stamp and stamp.get("identity") == ident and all(p.exists() for p in b.outputs):
        if shared:
            sharedcache.publish(shared, shared_key, b.build_dir, list(b.shared_files), stamp)
        return _cached(b, ident, stamp, log, t0), stamp
    if shared and not force:
        fetched = _fetch_shared(b, shared, shared_key, ident, progress)
        if fetched:
            return _cached(b, ident, fetched, log, t0), fetched
    with build_lock(progress):
        (b.build_dir / STAMP).unlink(missing_ok=True)
        log.write_text("")
        with sharedcache.ccache_configured(b.fleet.ccache_remote, b.build_dir / "ccache-stats.log"):
            ran = b.run(stamp, log)
        cc = sharedcache.ccache_stats(b.build_dir / "ccache-stats.log") if b.wrapper == "ccache" else None
        arts = b.artifacts()
        new = {"identity": ident, "warnings": ran.warnings, "steps": ran.steps, **ran.extra,
               "artifacts": {k: asdict(v) for k, v in arts.items()}, "duration": round(time.monotonic() - t0, 1),
               "ccache": cc}
        safefs.replace_file(b.build_dir / STAMP, json.dumps(new, indent=1).encode())
    if shared:
        sharedcache.publish(shared, shared_key, b.build_dir, list(b.shared_files), new)
    built = Built(tree=b.tree, srctree=Path(b.srctree), build_dir=b.build_dir, cached=False,
                  duration=time.monotonic() - t0, log=log, warnings=ran.warnings, artifacts=arts, identity=ident,
                  ccache=cc)
    return built, new


def _cached(b: Backend, ident: dict, stamp: dict, log: Path, t0: float) -> Built:
    return Built(tree=b.tree, srctree=Path(b.srctree), build_dir=b.build_dir, cached=True,
                 duration=time.monotonic() - t0, log=log, warnings=stamp.get("warnings", []),
                 artifacts={k: Artifact(**v) for k, v in stamp.get("artifacts", {}).items()}, identity=ident,
                 fetched_from=stamp.get("fetched_from"))


def _fetch_shared(b: Backend, shared: Path, k: str, ident: dict, progress) -> dict | None:
    """The same build from the shared cache, unpacked into build_dir and stamped as ours; None on a miss."""
    theirs = sharedcache.fetch(shared, k, b.build_dir)
    if not theirs or not all(p.exists() for p in b.outputs):
        return None
    if progress:
        progress(f"fetched from the shared cache ({shared}): build {k[:12]}")
    arts = b.artifacts()
    stamp = {"identity": ident, "warnings": theirs.get("warnings", []), "steps": theirs.get("steps", 0),
             "artifacts": {n: asdict(a) for n, a in arts.items()}, "duration": 0.0,
             "fetched_from": str(shared / "builds" / f"{k}.tar")}
    safefs.replace_file(b.build_dir / STAMP, json.dumps(stamp, indent=1).encode())
    return stamp


@dataclass(kw_only=True)
class BuildResult(Built):
    profile: str
    config_hash: str
    kernel_release: str

    @property
    def bzimage(self) -> Path:
        return self.build_dir / "arch/x86/boot/bzImage"

    @property
    def modules_dir(self) -> Path:
        return self.build_dir / "staging"

    @property
    def config(self) -> Path:
        return self.build_dir / ".config"


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextmanager
def build_lock(progress=None):
    """One kernel build at a time on this machine (2 cores): others wait."""
    lock = Path(os.environ.get("KPT_BUILD_LOCK", DEFAULT_LOCK))
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(f"waiting for another kernel build to finish (lock {lock})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# source_state() walks the whole tree: git status lstats each of a kernel's ~80,000 files and
# reads each folder, 0.4-0.9 s with a warm page cache and 4-17 s when other builds have evicted
# it (a warm `kpt ci` with nothing changed spent 17.7 s of its 'config cached' stage there, and
# its build stage walked again). Within one run nothing edits a source between the stages that
# ask (config, build; apply runs before both), so a run makes each walk once.
_STATES: dict[tuple[str, bool], str | None] | None = None


@contextmanager
def remembered_source_states():
    """source_state() answers each (tree, portable) once inside this block (one kpt ci run)."""
    global _STATES
    saved, _STATES = _STATES, {}
    try:
        yield
    finally:
        _STATES = saved


def source_state(srctree: Path, portable: bool = False) -> str | None:
    """A fingerprint of the source: HEAD plus the content of changed files.

    portable: HEAD's tree instead of the commit, so the same content imported
    or committed on another runner (another message, date or parent) is the
    same source (the shared build cache's key). None when the tree is not a
    git checkout (then make decides).
    """
    key = (str(Path(srctree).resolve()), portable)
    if _STATES is not None and key in _STATES:
        return _STATES[key]
    state = _source_state(Path(srctree), portable)
    if _STATES is not None:
        _STATES[key] = state
    return state


def _source_state(srctree: Path, portable: bool) -> str | None:
    head = proc.run(["git", "-C", str(srctree), "rev-parse", "HEAD^{tree}" if portable else "HEAD"], timeout=60)
    if not head.ok:
        return None
    first = head.stdout.strip()
    if portable and proc.run(["git", "-C", str(srctree), "describe", "--exact-match", "HEAD"], timeout=60).ok:
        # kbuild's setlocalversion appends "+" unless HEAD carries an annotated tag: part of the output.
        first += " tagged"
    st = proc.run(["git", "-C", str(srctree), "status", "--porcelain", "-z", "--untracked-files=all"], timeout=300)
    if not st.ok:
        return None
    h = hashlib.sha256(first.encode())
    entries = [e for e in st.stdout.split("\0") if e]
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape"))
        p = srctree / e[3:]
        if p.is_file():
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def compiler_id(wrapper: str | None) -> str:
    gcc = proc.run(["gcc", "--version"], timeout=30)
    return (gcc.stdout.splitlines() or ["?"])[0] + f" wrapper={wrapper or 'none'}"


def host_tools(stages: tuple[str, ...] = ("build",)) -> dict:
    """The host's side of a build's identity: the stages' Debian packages and the
    tools PATH actually resolves (a /usr/local gcc or depmod is not the package's)."""
    from kpatch_tool import prereqs

    packages: dict = {}
    for stage in stages:
        packages.update(prereqs.versions(stage))
    # gcc's own line is in the identity already (compiler_id); these are the other tools PATH picks.
    tools = ("make", "depmod") if "build" in stages else ("make",)
    return {"packages": packages, "tools": {t: prereqs.tool_version(t) for t in tools}}


def build_dir_for(ws: Workspace, tree: str, srctree: Path, profile: str, config_hash: str) -> Path:
    """Where the O= folder of (srctree, config) lives.

    For our own worktrees it is a direct child of the source tree: kbuild then
    uses `..` as srctree, so every compiler command line is the same in every
    worktree and ccache hits across them (a series worktree builds warm after
    its base). The kernel's .gitignore (`.*`) keeps it out of git's view. A
    folder of the user's (--worktree) is not written to: its builds go to the cache.
    """
    srctree = Path(srctree).resolve()
    ours = (ws.cache_dir / "worktrees").resolve()
    if ours in srctree.parents:
        return srctree / f".kpt-build-{profile}-{config_hash[:12]}"
    where = hashlib.sha256(str(srctree).encode()).hexdigest()[:8]
    return ws.cache_dir / "builds" / tree / f"{profile}-{where}-{config_hash[:12]}"


def make_env(wrapper: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # Relative paths in ccache's hash: a second worktree of the same commit hits.
    env.setdefault("CCACHE_BASEDIR", "/")
    env.setdefault("CCACHE_NOHASHDIR", "1")
    env["KBUILD_BUILD_TIMESTAMP"] = env.get("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
    env["KBUILD_BUILD_USER"] = "kpt"
    env["KBUILD_BUILD_HOST"] = "kpt"
    return env


def cc_for(wrapper: str | None) -> str:
    if wrapper and wrapper != "none":
        if not proc.which(wrapper):
            raise PrereqError(f"compiler wrapper '{wrapper}' not found on PATH (see `kpt doctor`)")
        return f"{wrapper} gcc"
    return "gcc"


class MakeWatcher:
    """Follows kbuild's output: step counts for progress, warnings, first errors."""

    def __init__(self, expected_steps: int | None, progress: Callable[[str], None] | None):
        self.steps = 0
        self.expected = expected_steps
        self.progress = progress
        self.errors: list[str] = []
        self.error_context: list[str] = []
        self.warnings: list[str] = []
        self.compiled: list[str] = []
        self.last_target = ""
        self._last_report = 0.0
        self._start = time.monotonic()

    def __call__(self, line: str) -> None:
        m = STEP_RE.match(line)
        if m:
            self.steps += 1
            self.last_target = f"{m.group('step')} {m.group('target')}"
            if m.group("step") in ("CC", "AS") or m.group("step").startswith("CC"):
                self.compiled.append(m.group("target"))
        elif WARN_RE.match(line):
            self.warnings.append(line.strip())
        elif ERROR_RE.match(line) or line.startswith("make") and "***" in line:
            if len(self.error_context) < 40:
                self.error_context.append(line)
            if ERROR_RE.match(line) and len(self.errors) < 10:
                self.errors.append(line.strip())
        now = time.monotonic()
        if self.progress and now - self._last_report > 1.0:
            self._last_report = now
            pct = f" {min(99, 100 * self.steps // self.expected)}%" if self.expected else ""
            self.progress(f"make{pct} [{now - self._start:.0f}s] {self.last_target}")


def _kernel_release(build_dir: Path) -> str:
    p = build_dir / "include/config/kernel.release"
    return p.read_text().strip() if p.exists() else ""


def _collect(build_dir: Path) -> dict[str, Artifact]:
    out = {}
    for name, rel in (("bzImage", "arch/x86/boot/bzImage"), ("vmlinux", "vmlinux"),
                      ("System.map", "System.map"), (".config", ".config")):
        p = build_dir / rel
        if p.exists():
            out[name] = Artifact(str(p), p.stat().st_size, sha256_file(p))
    staging = build_dir / "staging"
    if staging.is_dir():
        kos = sorted(staging.rglob("*.ko"))
        h = hashlib.sha256()
        for ko in kos:
            h.update(ko.name.encode())
            h.update(sha256_file(ko).encode())
        out["modules"] = Artifact(str(staging), len(kos), h.hexdigest())
    return out


def _fail(watcher: MakeWatcher, res: proc.ProcResult, log: Path, what: str) -> BuildError:
    first = watcher.errors[0] if watcher.errors else None
    if res.timed_out:
        msg = f"{what}: timed out after {res.duration:.0f}s (log {log})"
    elif first:
        m = ERROR_RE.match(first)
        msg = f"{what}: {m.group('file')}:{m.group('line')}: {m.group('msg')} (log {log})"
    else:
        msg = f"{what}: make exited {res.returncode} (log {log})"
    detail_lines = watcher.error_context[:15] or res.stdout.splitlines()[-15:]
    return BuildError(msg, detail="\n".join(detail_lines))


def run_make(srctree: Path, build_dir: Path, targets: list[str], *, wrapper: str | None, jobs: int | None,
             log: Path, expected_steps: int | None = None, progress=None, extra: list[str] = (),
             timeout: float = 4 * 3600) -> tuple[proc.ProcResult, MakeWatcher]:
    watcher = MakeWatcher(expected_steps, progress)
    cmd = ["make", "-C", str(srctree), f"O={build_dir}", f"CC={cc_for(wrapper)}",
           f"-j{jobs or cores()}", *extra, *targets]
    try:
        res = proc.stream(cmd, on_line=watcher, env=make_env(wrapper), log=log, timeout=timeout)
    except OSError as exc:
        raise KptError(f"cannot run make for {build_dir}: {exc}") from None
    return res, watcher


# What a boot needs from a Linux build (kernel, modules, config, release): what runners share.
LINUX_SHARED_FILES = ("arch/x86/boot/bzImage", "System.map", ".config", "include/config/kernel.release", "staging")


def build_linux(ws: Workspace, *, srctree: Path, tree: str = "linux", profile: str,
                config_text: str, config_hash: str, wrapper: str | None = "ccache",
                jobs: int | None = None, progress=None, force: bool = False) -> BuildResult:
    """Build bzImage and modules for config_text in a build folder of its own."""
    srctree = Path(srctree)
    if not (srctree / "Makefile").is_file():
        raise UsageError(f"{srctree}: not a kernel source tree (no Makefile); did the worktree vanish?")
    build_dir = build_dir_for(ws, tree, srctree, profile, config_hash)
    modules = "CONFIG_MODULES=y" in config_text

    def run(stamp: dict | None, log: Path) -> Ran:
        cfg = build_dir / ".config"
        if not cfg.exists() or cfg.read_text() != config_text:
            # Only a changed config is written: its mtime drives kbuild's syncconfig.
            safefs.replace_file(cfg, config_text.encode())
        targets = ["bzImage"] + (["modules"] if modules else [])
        expected = (stamp or {}).get("steps") or None
        res, w = run_make(srctree, build_dir, targets, wrapper=wrapper, jobs=jobs, log=log,
                          expected_steps=expected, progress=progress)
        if not res.ok:
            raise _fail(w, res, log, f"build of {tree} ({profile}) failed")
        staging = build_dir / "staging"
        if staging.exists():
            shutil.rmtree(staging)
        if modules:
            r2, w2 = run_make(srctree, build_dir, ["modules_install"], wrapper=wrapper, jobs=1, log=log,
                              extra=[f"INSTALL_MOD_PATH={staging}", "INSTALL_MOD_STRIP=1"])
            if not r2.ok:
                raise _fail(w2, r2, log, f"modules_install of {tree} ({profile}) failed")
            if not any(staging.glob("lib/modules/*/modules.dep")):
                raise BuildError(f"modules_install of {tree} ({profile}) wrote no modules.dep (depmod; log {log})")
        return Ran(w.warnings, max(w.steps, expected or 0))

    backend = Backend(tree, srctree, build_dir, {"config_hash": config_hash},
                      [build_dir / "arch/x86/boot/bzImage"], run, lambda: _collect(build_dir), wrapper,
                      shared_files=LINUX_SHARED_FILES, fleet=sharedcache.settings(ws.data, ws.root / "kpt.toml"),
                      # LOCALVERSION_AUTO puts the commit's hash into the kernel release.
                      portable_source="CONFIG_LOCALVERSION_AUTO=y" not in config_text)
    built, _ = cached_build(backend, force=force, progress=progress)
    return BuildResult(**vars(built), profile=profile, config_hash=config_hash,
                       kernel_release=_kernel_release(build_dir))


def build_module(ws: Workspace, build: BuildResult, subdir: str, *, srctree: Path | None = None,
                 wrapper: str | None = "ccache", jobs: int | None = None, progress=None) -> list[Path]:
    """Rebuild the modules of one directory against an already built kernel.

    The rebuilt .ko files replace those in the staging folder, so the next
    image and boot use them without rebuilding the kernel.
    """
    srctree = Path(srctree or build.srctree)
    subdir = subdir.strip("/")
    if not (srctree / subdir).is_dir():
        raise UsageError(f"{srctree / subdir}: no such directory in the tree")
    if not (build.build_dir / "Module.symvers").exists():
        raise UsageError(f"{build.build_dir}: the kernel of profile '{build.profile}' is not built yet (run `kpt build linux`)")
    log = build.build_dir / "module.log"
    log.write_text("")
    kos = sorted(p.name for p in (build.build_dir / subdir).glob("*.ko"))
    if not kos:
        raise UsageError(f"{subdir}: the '{build.profile}' build has no modules there (is it built-in, =y?)")
    with build_lock(progress):
        # Single-target .ko builds compile the directory and run modpost for
        # just these modules: seconds, where `make modules` walks the tree.
        res, w = run_make(srctree, build.build_dir, [f"{subdir}/{k}" for k in kos], wrapper=wrapper,
                          jobs=jobs, log=log, progress=progress)
        if not res.ok:
            raise _fail(w, res, log, f"module build of {subdir} failed")
    built = sorted((build.build_dir / subdir).glob("*.ko"))
    release = build.kernel_release
    dest_root = build.modules_dir / "lib/modules" / release / "kernel" / subdir
    replaced = []
    for ko in built:
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / ko.name
        tmp = dest.with_suffix(".ko.kpt-new")
        shutil.copyfile(ko, tmp)
        proc.run(["strip", "--strip-debug", str(tmp)], timeout=60)
        os.replace(tmp, dest)
        replaced.append(dest)
    return replaced


# --------------------------------------------------------------------------
# warnings per patch (kpt build --each)


def _warning_file(w: str) -> str:
    m = WARN_RE.match(w)
    return m.group("file") if m else ""


def _norm_warning(w: str) -> str:
    # Line numbers move when a patch adds lines above; compare file + message.
    m = WARN_RE.match(w)
    return f"{m.group('file')}: {m.group('msg')}" if m else w


class WarningLedger:
    """The warnings of a tree, file by file, across incremental builds.

    An incremental build only recompiles what changed, so only those files'
    warnings are seen again; every other file keeps the warnings it had.
    """

    def __init__(self):
        self.by_file: dict[str, set[str]] = {}

    def update(self, compiled: list[str], warnings: list[str]) -> tuple[set[str], set[str]]:
        before = self.all()
        seen: dict[str, set[str]] = {}
        for w in warnings:
            seen.setdefault(_warning_file(w), set()).add(_norm_warning(w))
        for obj in compiled:
            src_stem = obj.rsplit(".", 1)[0]
            for f in list(self.by_file):
                if f.rsplit(".", 1)[0].endswith(src_stem):
                    self.by_file.pop(f)
        for f, ws_ in seen.items():
            self.by_file[f] = ws_
        after = self.all()
        return after - before, before - after

    def all(self) -> set[str]:
        return set().union(*self.by_file.values()) if self.by_file else set()


@dataclass
class EachStep:
    index: int
    commit: str
    subject: str
    status: str  # builds, fails
    new_warnings: list[str]
    fixed_warnings: list[str]
    error: str = ""
    seconds: float = 0.0


def each_commits(worktree: Path, base: str) -> list[tuple[str, str]]:
    """(commit, subject) for base..HEAD of worktree, oldest first: one git call."""
    out = proc.run(["git", "-C", str(worktree), "log", "--reverse", "--format=%H %s", f"{base}..HEAD"],
                   check=True).stdout
    commits = [tuple(line.split(" ", 1)) if " " in line else (line, "") for line in out.splitlines() if line]
    if not commits:
        raise UsageError(f"{worktree}: no commits between {base[:12]} and HEAD to build")
    return commits


def each_dir_for(ws: Workspace, tree: str, worktree: Path) -> Path:
    """Our bisect worktree for a series worktree."""
    return ws.cache_dir / "worktrees" / tree / f"each-{hashlib.sha256(str(worktree).encode()).hexdigest()[:8]}"


def each_worktree(ws: Workspace, tree: str, worktree: Path, base: str) -> Path:
    """Our detached bisect worktree, created or brought to base (nobody edits it)."""
    each_dir = each_dir_for(ws, tree, worktree)
    if each_dir.exists():
        proc.run(["git", "-C", str(each_dir), "checkout", "-q", "--detach", base], check=True, timeout=600)
    else:
        each_dir.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["git", "-C", str(worktree), "worktree", "add", "-q", "--detach", str(each_dir), base],
                 check=True, timeout=1800)
    return each_dir


def run_each(each_dir: Path, commits: list[tuple[str, str]], build, fail, update, progress=None) -> list[EachStep]:
    """Check out each commit in turn and build it incrementally.

    build() -> (result, watcher); fail(watcher, result, what) -> BuildError;
    update(watcher) -> (new warnings, fixed warnings). The first failing patch
    ends the run: later patches build on a broken one.
    """
    steps: list[EachStep] = []
    for i, (c, subject) in enumerate(commits, 1):
        if progress:
            progress(f"patch {i}/{len(commits)}: {subject}")
        proc.run(["git", "-C", str(each_dir), "checkout", "-q", "--detach", c], check=True, timeout=600)
        t = time.monotonic()
        res, w = build()
        if not res.ok:
            err = fail(w, res, f"patch {i}/{len(commits)} '{subject}'")
            steps.append(EachStep(i, c, subject, "fails", [], [], err.message, time.monotonic() - t))
            break
        new, fixed = update(w)
        steps.append(EachStep(i, c, subject, "builds", sorted(new), sorted(fixed), "", time.monotonic() - t))
    return steps


def build_each(ws: Workspace, *, worktree: Path, base: str, tree: str, profile: str, config_text: str,
               config_hash: str, wrapper: str | None = "ccache", jobs: int | None = None,
               progress=None, make_targets: list[str] | None = None) -> list[EachStep]:
    """Build after each commit base..HEAD of worktree, incrementally, in a worktree of our own."""
    commits = each_commits(worktree, base)
    each_dir = each_worktree(ws, tree, worktree, base)
    build_dir = build_dir_for(ws, tree, each_dir, profile, config_hash)
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / ".config").write_text(config_text) if not (build_dir / ".config").exists() or \
        (build_dir / ".config").read_text() != config_text else None
    targets = make_targets or (["bzImage"] + (["modules"] if "CONFIG_MODULES=y" in config_text else []))
    ledger = WarningLedger()
    log = build_dir / "each.log"
    log.write_text("")

    def make():
        return run_make(each_dir, build_dir, targets, wrapper=wrapper, jobs=jobs, log=log, progress=progress)

    with build_lock(progress):
        if progress:
            progress(f"building the base {base[:12]} first")
        res, w = make()
        if not res.ok:
            raise _fail(w, res, log, f"the base {base[:12]} does not build")
        ledger.update(w.compiled, w.warnings)
        return run_each(each_dir, commits, make, lambda w_, r, what: _fail(w_, r, log, what),
                        lambda w_: ledger.update(w_.compiled, w_.warnings), progress)
