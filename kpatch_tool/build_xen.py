"""Xen hypervisor builds: `make -C xen O=...`, configured by kpt's own Kconfig code.

Xen's kconfig is a copy of Linux's (about 5.4) and kconfiglib reads it as it
is: with the variables Xen's Makefile exports (ARCH=x86_64 from
XEN_TARGET_ARCH, SRCARCH=x86, srctree=xen/, CC, LD, XEN_FULLVERSION,
XEN_HAS_CHECKPOLICY, XEN_HAS_BUILD_ID, CLANG_FLAGS), our evaluation of
x86_64_defconfig is identical line for line to `make -C xen defconfig`. So a
fragment goes through kconfig.evaluate() like a Linux one (every requested
value checked, explained when it does not take), and before make starts the
result is checked against Xen's own `make olddefconfig`: our .config must be
its fixed point, or the build would silently use other values.

Xen 4.17 builds out of tree (O=). The build folder is a direct child of the
tree's xen/ folder, so Xen uses `..` as srctree and compiler command lines are
the same in every worktree (ccache hits across them); a `.gitignore` of `*`
in it keeps it out of git's view. The cache works as for Linux (build.py): a
stamp of (source state, config hash, compiler) written after a good build;
a rerun with nothing changed never starts make.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import build as buildmod
from kpatch_tool import proc, safefs
from kpatch_tool.build import Artifact, Built
from kpatch_tool.errors import BuildError, ConfigError, KptError, UsageError
from kpatch_tool.workspace import Workspace

ARCH = "x86_64"  # XEN_TARGET_ARCH; Xen's Kconfig sees it as $(ARCH)
BASE = "defconfig"  # arch/x86/configs/x86_64_defconfig, Xen's KBUILD_DEFCONFIG
TARGETS = ["xen.gz"]  # builds xen (the multiboot ELF) and gzips it (gzip -n: reproducible)
# compile.h carries who/where/when: fixed, so two builds of one source are the same bytes
# and ccache is not defeated by a date in a header.
REPRODUCIBLE = {"XEN_WHOAMI": "kpt", "XEN_DOMAIN": "kpt", "XEN_BUILD_HOST": "kpt",
                "XEN_BUILD_DATE": "Thu Jan  1 00:00:00 UTC 1970", "XEN_BUILD_TIME": "00:00:00"}


@dataclass(kw_only=True)
class XenBuildResult(Built):
    version: str
    config_hash: str
    fragments: list[str]

    @property
    def xen(self) -> Path:
        """The multiboot ELF QEMU's -kernel loads."""
        return self.build_dir / "xen"

    @property
    def xen_gz(self) -> Path:
        return self.build_dir / "xen.gz"

    @property
    def config(self) -> Path:
        return self.build_dir / ".config"


def hypervisor_dir(srctree: Path) -> Path:
    xen = Path(srctree) / "xen"
    if not (xen / "Makefile").is_file() or not (xen / "Kconfig").is_file():
        raise UsageError(f"{srctree}: not a Xen source tree (no xen/Makefile and xen/Kconfig)")
    return xen


def xen_version(xen: Path) -> str:
    res = proc.run(["make", "-s", "-C", str(xen), "xenversion"], timeout=60)
    return res.stdout.strip().splitlines()[-1] if res.ok and res.stdout.strip() else ""


def kconfig_env(xen: Path, cc: str = "gcc") -> dict[str, str]:
    """The variables Xen's Kconfig reads beyond kbuild's (xen/Makefile, Config.mk)."""
    # Config.mk: ld-ver-build-id prints n when `ld --build-id` *mentions* build-id (an error).
    ld = proc.run(["ld", "--build-id"], timeout=30)
    has_build_id = "n" if "build-id" in (ld.stdout + ld.stderr) else "y"
    cp = proc.which("checkpolicy")
    has_checkpolicy = "n"
    if cp:
        r = proc.run([cp, "-h"], timeout=30)
        has_checkpolicy = "y" if "xen" in (r.stdout + r.stderr) else "n"
    return {"XEN_FULLVERSION": xen_version(xen), "XEN_HAS_CHECKPOLICY": has_checkpolicy,
            "XEN_HAS_BUILD_ID": has_build_id, "CLANG_FLAGS": "", "XEN_TARGET_ARCH": ARCH}


@contextmanager
def _environ(extra: dict[str, str]):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def configure(srctree: Path, fragments=(), *, base: str = BASE):
    """kconfig.evaluate() on xen/Kconfig; ConfigError when a request did not take.

    kconfiglib reads $(VAR)s from the environment while it parses, once per
    process and tree: Xen's extra variables are set for that parse.
    """
    from kpatch_tool import kconfig

    xen = hypervisor_dir(srctree)
    with _environ(kconfig_env(xen)):
        result = kconfig.evaluate(xen, base, [Path(f) for f in fragments], arch=ARCH)
    if result.problems:
        raise ConfigError(f"xen: {len(result.problems)} requested value(s) not in the .config",
                          detail=result.report())
    return result


def cross_check(srctree: Path, config_text: str, log: Path | None = None) -> list[str]:
    """Diff between our .config and Xen's own `make olddefconfig` of it ([] = fixed point)."""
    from kpatch_tool import kconfig

    xen = hypervisor_dir(srctree)
    theirs = kconfig.kbuild_config(xen, "olddefconfig", config_text, arch=ARCH,
                                   extra_env={"XEN_TARGET_ARCH": ARCH}, log=log)
    return list(difflib.unified_diff(kconfig.normalise(config_text), kconfig.normalise(theirs),
                                     fromfile="xen .config (kpt)", tofile="make -C xen olddefconfig",
                                     lineterm="", n=1))


def _artifacts(build_dir: Path) -> dict[str, Artifact]:
    out = {}
    for name in ("xen", "xen.gz", "xen-syms", ".config"):
        p = build_dir / name
        if p.is_file():
            out[name] = Artifact(str(p), p.stat().st_size, buildmod.sha256_file(p))
    return out


def build_id(elf: Path) -> str:
    """The GNU build id of a Xen ELF (what `xl info` reports as build_id)."""
    res = proc.run(["readelf", "-n", str(elf)], timeout=60)
    for line in res.stdout.splitlines():
        if line.strip().startswith("Build ID:"):
            return line.split(":", 1)[1].strip()
    raise KptError(f"{elf}: no GNU build id (readelf -n); Xen's build-id needs ld --build-id")


def make_dir(build_dir: Path, in_source: bool) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    if in_source and not (build_dir / ".gitignore").exists():
        # Xen's outputmakefile writes the same file, but only once make got that far.
        (build_dir / ".gitignore").write_text("# kpt build folder\n*\n")


# The fragment a run's hypervisor is built with, when the workspace has it (the project's does).
SMOKE_FRAGMENT = "kernel-configs/xen/smoke.config"


def smoke_fragments(ws: Workspace) -> list[Path]:
    """[the workspace's smoke fragment] if it has one, else [] (x86_64_defconfig alone)."""
    frag = ws.root / SMOKE_FRAGMENT
    return [frag] if frag.is_file() else []


def _hypervisor_make(xen: Path, build_dir: Path, config_text: str, *, wrapper: str | None, jobs: int | None,
                     log: Path, progress=None, expected: int | None = None, timeout: float = 3 * 3600):
    """make xen.gz in build_dir with config_text as its .config: (result, watcher)."""
    conf = build_dir / ".config"
    if not conf.exists() or conf.read_text() != config_text:
        # Only a changed config is written: its mtime drives Xen's syncconfig.
        safefs.replace_file(conf, config_text.encode())
    extra = [f"XEN_TARGET_ARCH={ARCH}", *(f"{k}={v}" for k, v in REPRODUCIBLE.items())]
    return buildmod.run_make(xen, build_dir, TARGETS, wrapper=wrapper, jobs=jobs, log=log,
                             expected_steps=expected, progress=progress, extra=extra, timeout=timeout)


def build_xen(ws: Workspace, *, srctree: Path, tree: str = "xen", fragments=(), wrapper: str | None = "ccache",
              jobs: int | None = None, progress=None, force: bool = False, check: bool = True,
              timeout: float = 3 * 3600) -> XenBuildResult:
    """Configure (defconfig + fragments) and build xen + xen.gz out of tree."""
    srctree = Path(srctree)
    xen = hypervisor_dir(srctree)
    cfg = configure(srctree, fragments)
    build_dir = buildmod.build_dir_for(ws, tree, xen, "xen", cfg.config_hash)
    in_source = xen.resolve() in build_dir.resolve().parents
    make_dir(build_dir, in_source)
    frag_names = [str(f) for f in fragments]

    def run(stamp: dict | None, log: Path) -> buildmod.Ran:
        if check:
            diff = cross_check(srctree, cfg.config_text, log)
            if diff:
                raise ConfigError("xen: kpt's .config is not a fixed point of Xen's `make olddefconfig` "
                                  "(our evaluation differs from Xen's kconfig)", detail="\n".join(diff))
        expected = (stamp or {}).get("steps") or None
        res, w = _hypervisor_make(xen, build_dir, cfg.config_text, wrapper=wrapper, jobs=jobs, log=log,
                                  progress=progress, expected=expected, timeout=timeout)
        if not res.ok:
            raise buildmod._fail(w, res, log, f"build of {tree} failed")
        if not (build_dir / "xen").is_file():
            raise KptError(f"build of {tree}: make succeeded but {build_dir / 'xen'} is missing (log {log})")
        if not (build_dir / "xen.gz").is_file():
            # An older Makefile without the xen.gz rule: gzip it as `make install` would.
            with open(build_dir / "xen", "rb") as src, gzip.GzipFile(build_dir / "xen.gz", "wb", 9, mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        return buildmod.Ran(w.warnings, max(w.steps, expected or 0),
                            {"version": xen_version(xen), "fragments": frag_names})

    backend = buildmod.Backend(tree, srctree, build_dir, {"config_hash": cfg.config_hash}, [build_dir / "xen"],
                               run, lambda: _artifacts(build_dir), wrapper, ("config",))
    built, stamp = buildmod.cached_build(backend, force=force, progress=progress)
    return XenBuildResult(**vars(built), version=stamp.get("version", ""), config_hash=cfg.config_hash,
                          fragments=frag_names)


# ---------------------------------------------------------------------------
# The toolstack (tools/): libxl, xl, xenstored, xenconsoled and the libraries
# dom0 needs, installed into a folder the dom0 root filesystem is overlaid with.
#
# Xen's tools do not build out of tree, and an in-source build would leave
# configure's and make's output in the series worktree. So the worktree's files
# (tracked and untracked, what `git ls-files` sees) are synchronised into
# BUILD/src, copying only what differs, so make stays incremental; configure
# runs there and `make -C tools install` fills BUILD/dist. The prefix and libdir
# are Debian's, so the libraries replace xen-utils-4.17's of the same soname in
# dom0's root filesystem and our xl/xenstored sit first on PATH (/usr/sbin).
TOOLS_CONFIGURE = [
    "--prefix=/usr", "--libdir=/usr/lib/x86_64-linux-gnu", "--sysconfdir=/etc", "--localstatedir=/var",
    "--with-system-qemu=/usr/bin/qemu-system-i386",
    # Nothing a smoke boot of PV guests runs: firmware for HVM guests, stubdoms,
    # OCaml/Go bindings, the XSM policy, the monitors and the PV shim.
    "--disable-seabios", "--disable-rombios", "--disable-ipxe", "--disable-qemu-traditional",
    "--disable-ocamltools", "--disable-golang", "--disable-xsmpolicy", "--disable-monitors", "--disable-pvshim",
    # Debian builds its packages without -Werror too; warnings are recorded, not fatal.
    "--disable-werror",
]
# What a dom0 smoke boot needs from the install (checked after the build).
TOOLS_OUTPUTS = ["usr/sbin/xl", "usr/sbin/xenstored", "usr/sbin/xenconsoled"]
AUTOTOOLS_AUX = ["/usr/share/misc/config.guess", "/usr/share/misc/config.sub"]


@dataclass(kw_only=True)
class XenToolsResult(Built):
    version: str
    configure_args: list[str]

    @property
    def dist(self) -> Path:
        """The installed tools (DESTDIR of `make -C tools install`)."""
        return self.build_dir / "dist"


def sync_source(srctree: Path, dest: Path) -> int:
    """Copy srctree's files (tracked and untracked, not ignored) into dest where they differ.

    Unchanged files keep their mtimes, so make rebuilds only what changed; files
    gone from the tree are removed from dest. Returns how many were copied."""
    res = proc.run(["git", "-C", str(srctree), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                   timeout=300)
    if not res.ok:
        raise KptError(f"{srctree}: git ls-files failed: {res.stderr.strip()[:200]}")
    # A file deleted in the worktree but still in the index is gone for the build too.
    names = {n for n in res.stdout.split("\0") if n and os.path.lexists(srctree / n)}
    state = dest.parent / "src-files.json"
    try:
        before = set(json.loads(state.read_text()))
    except (OSError, ValueError):
        before = set()
    copied = 0
    for name in sorted(names):
        src, dst = srctree / name, dest / name
        if src.is_symlink():
            target = os.readlink(src)
            if dst.is_symlink() and os.readlink(dst) == target:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            os.symlink(target, dst)
            copied += 1
            continue
        if not src.is_file():
            continue  # a submodule or other non-file entry
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size \
                and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            dst.unlink()
        shutil.copy2(src, dst)
        copied += 1
    for name in before - names:
        (dest / name).unlink(missing_ok=True)
    safefs.replace_file(state, json.dumps(sorted(names)).encode())
    return copied


def tools_dir(ws: Workspace, tree: str, srctree: Path, args: list[str]) -> Path:
    h = hashlib.sha256(json.dumps(args).encode()).hexdigest()
    return buildmod.build_dir_for(ws, tree, srctree, "xen-tools", h)


def _tools_make(srctree: Path, build_dir: Path, args: list[str], *, wrapper: str | None, jobs: int | None,
                log: Path, progress=None, expected: int | None = None,
                timeout: float = 3 * 3600) -> tuple[proc.ProcResult, buildmod.MakeWatcher]:
    """Synchronise srctree into build_dir/src, configure if needed, make and install into
    build_dir/dist. (result, watcher) of make; configure's failure is a BuildError."""
    src, dist = build_dir / "src", build_dir / "dist"
    env = buildmod.make_env(wrapper)
    # CC stays one word: tools/firmware passes `CC=$(CC)` on unquoted, so "ccache gcc"
    # breaks it. ccache comes in through its compiler links instead (Debian's ccache).
    buildmod.cc_for(wrapper)  # a missing wrapper is a PrereqError, as for Linux
    if wrapper and wrapper != "none":
        links = Path("/usr/lib") / wrapper
        if not (links / "gcc").exists():
            raise KptError(f"{links}/gcc missing: the Xen tools use {wrapper} through its compiler links")
        env["PATH"] = f"{links}:{env.get('PATH', '')}"

    def step(cmd: list[str], what: str, cwd: Path, watcher=None) -> proc.ProcResult:
        try:
            res = proc.stream(cmd, cwd=cwd, env=env, log=log, on_line=watcher, timeout=timeout)
        except OSError as exc:
            raise KptError(f"xen tools: cannot run {cmd[0]}: {exc}") from None
        if not res.ok and watcher is None:
            tail = " ".join(res.stdout.strip().splitlines()[-2:])[-300:]
            raise BuildError(f"xen tools: {what} failed: {tail} (log {log})")
        return res

    src.mkdir(exist_ok=True)
    n = sync_source(srctree, src)
    if progress:
        progress(f"xen tools: {n} source file(s) synchronised")
    configured = build_dir / "kpt-configured.json"
    want = {"args": args, "cc": "gcc", "configure.ac": buildmod.sha256_file(src / "tools" / "configure.ac"),
            "top": buildmod.sha256_file(src / "configure.ac") if (src / "configure.ac").is_file() else ""}
    try:
        have = json.loads(configured.read_text())
    except (OSError, ValueError):
        have = None
    if have != want or not (src / "config" / "Tools.mk").is_file() or not (src / "config" / "Paths.mk").is_file():
        configured.unlink(missing_ok=True)
        if progress:
            progress("xen tools: autoconf + configure")
        if not (src / "configure").is_file() or not (src / "tools" / "configure").is_file():
            step(["sh", "./autogen.sh"], "autogen.sh (autoconf)", src)
        for aux in AUTOTOOLS_AUX:
            if not Path(aux).is_file():
                raise KptError(f"{aux} missing (apt-get install autotools-dev)")
            shutil.copyfile(aux, src / Path(aux).name)
        # The top-level configure: it writes config/Paths.mk (the install paths) and runs
        # tools/configure with the same arguments; stubdoms and docs are not built.
        step(["./configure", *args, "--disable-stubdom", "--disable-docs", "CC=gcc"], "configure", src)
        safefs.replace_file(configured, json.dumps(want).encode())
    w = buildmod.MakeWatcher(expected, progress)
    opts = [f"-j{jobs or buildmod.cores()}", "CC=gcc", *(f"{k}={v}" for k, v in REPRODUCIBLE.items())]
    # The public headers first, as Xen's top-level build-tools target does (tools/include's
    # links into xen/include): `make -C tools` alone does not make them.
    for sub in ("tools/include", "tools"):
        res = step(["make", "-C", sub, *opts], f"make -C {sub}", src, w)
        if not res.ok:
            return res, w
    make = ["make", "-C", "tools", *opts]
    # A fresh install each time: nothing of an older build lingers in dom0.
    staging = build_dir / "dist.new"
    if staging.exists():
        shutil.rmtree(staging)
    res = step([*make, "install", f"DESTDIR={staging}"], "make -C tools install", src, w)
    if not res.ok:
        return res, w
    missing = [p for p in TOOLS_OUTPUTS if not (staging / p).exists()]
    if missing:
        raise BuildError(f"xen tools: the install lacks {', '.join(missing)} (log {log})")
    if dist.exists():
        shutil.rmtree(dist)
    os.replace(staging, dist)
    return res, w


def build_tools(ws: Workspace, *, srctree: Path, tree: str = "xen", wrapper: str | None = "ccache",
                jobs: int | None = None, progress=None, force: bool = False,
                timeout: float = 3 * 3600) -> XenToolsResult:
    """Configure, build and install Xen's tools from srctree into BUILD/dist; cached."""
    srctree = Path(srctree)
    hypervisor_dir(srctree)
    if not (srctree / "tools" / "configure.ac").is_file():
        raise UsageError(f"{srctree}: no tools/configure.ac: not a Xen tree with its toolstack")
    args = list(TOOLS_CONFIGURE)
    build_dir = tools_dir(ws, tree, srctree, args)
    # A `.gitignore` of `*` keeps the folder out of git's view (and of source_state).
    make_dir(build_dir, in_source=True)
    dist = build_dir / "dist"

    def run(stamp: dict | None, log: Path) -> buildmod.Ran:
        expected = (stamp or {}).get("steps") or None
        res, w = _tools_make(srctree, build_dir, args, wrapper=wrapper, jobs=jobs, log=log, progress=progress,
                             expected=expected, timeout=timeout)
        if not res.ok:
            raise buildmod._fail(w, res, log, "xen tools: make failed")
        return buildmod.Ran(w.warnings, max(w.steps, expected or 0), {"version": xen_version(build_dir / "src/xen")})

    def artifacts() -> dict[str, Artifact]:
        out = {}
        for rel in TOOLS_OUTPUTS:
            p = dist / rel
            if p.is_file():
                out[Path(rel).name] = Artifact(str(p), p.stat().st_size, buildmod.sha256_file(p))
        return out

    backend = buildmod.Backend(tree, srctree, build_dir, {"configure": args}, [dist / p for p in TOOLS_OUTPUTS],
                               run, artifacts, wrapper, ("build", "xen-tools"))
    built, stamp = buildmod.cached_build(backend, force=force, progress=progress)
    return XenToolsResult(**vars(built), version=stamp.get("version", ""), configure_args=args)


def build_each_xen(ws: Workspace, *, worktree: Path, base: str, tree: str = "xen", fragments=(),
                   wrapper: str | None = "ccache", jobs: int | None = None,
                   progress=None) -> list[buildmod.EachStep]:
    """`kpt build --each SERIES --tree xen`: hypervisor and tools after base and after each
    commit base..HEAD of worktree, incrementally, in a bisect worktree of our own."""
    commits = buildmod.each_commits(Path(worktree), base)
    args = list(TOOLS_CONFIGURE)
    with buildmod.build_lock(progress):
        each_dir = buildmod.each_worktree(ws, tree, Path(worktree), base)
        xen = hypervisor_dir(each_dir)
        cfg = configure(each_dir, fragments)
        hv_dir = buildmod.build_dir_for(ws, tree, xen, "xen", cfg.config_hash)
        make_dir(hv_dir, xen.resolve() in hv_dir.resolve().parents)
        tools_build = tools_dir(ws, tree, each_dir, args)
        make_dir(tools_build, in_source=True)
        log = tools_build / "each.log"
        log.write_text("")
        ledger = buildmod.WarningLedger()

        def build():
            res, hw = _hypervisor_make(xen, hv_dir, cfg.config_text, wrapper=wrapper, jobs=jobs, log=log,
                                       progress=progress)
            if not res.ok:
                return res, hw
            res, w = _tools_make(each_dir, tools_build, args, wrapper=wrapper, jobs=jobs, log=log,
                                 progress=progress)
            # One account of the step: the hypervisor's compiles and warnings, then the tools'.
            w.compiled[:0] = hw.compiled
            w.warnings[:0] = hw.warnings
            return res, w

        def fail(w, res, what):
            return buildmod._fail(w, res, log, what)

        if progress:
            progress(f"building the base {base[:12]} first")
        res, w = build()
        if not res.ok:
            raise fail(w, res, f"the base {base[:12]} does not build")
        ledger.update(w.compiled, w.warnings)
        return buildmod.run_each(each_dir, commits, build, fail, lambda w_: ledger.update(w_.compiled, w_.warnings),
                                 progress)
