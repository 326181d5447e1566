"""Host prerequisites: one list (data/packages.txt), checked before each stage.

scripts/setup.sh installs the list's packages; `kpt doctor` shows it; every
stage calls `require(stage)` before it starts, so a missing tool is exit 7
naming the Debian package, never a quietly degraded artifact. The versions of
a stage's packages are part of its cache keys (`versions(stage)`): a build made
before the compiler or kmod changed is not reused.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import PrereqError

STAGES = ("all", "import", "config", "build", "image", "boot", "xen", "mail", "qemu-build", "report", "setup",
          "fleet", "xen-tools")  # fleet: running the emitted CI pipeline here (gitlab-ci-local)


@dataclass(frozen=True)
class Package:
    name: str
    stages: tuple[str, ...]
    checks: tuple[str, ...]  # commands, /files, perl:Module, git:subcommand; empty: installed is enough


def load(text: str | None = None) -> list[Package]:
    if text is None:
        text = resources.files("kpatch_tool").joinpath("data/packages.txt").read_text()
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        checks = tuple(c for c in parts[2:] if c != "-")
        out.append(Package(parts[0], tuple(parts[1].split(",")) if len(parts) > 1 else ("all",), checks))
    return out


@functools.cache
def packages() -> tuple[Package, ...]:
    return tuple(load())


def for_stage(stage: str) -> list[Package]:
    return [p for p in packages() if stage in p.stages or "all" in p.stages]


def _git_exec_path(env_path: str | None) -> Path | None:
    g = shutil.which("git", path=env_path)
    if not g:
        return None
    out = subprocess.run([g, "--exec-path"], capture_output=True, text=True).stdout.strip()
    return Path(out) if out else None


def check_one(check: str, env_path: str | None = None) -> str | None:
    """Where the check is satisfied (a path, a module), or None."""
    if check.startswith("/"):
        return check if os.path.exists(check) else None
    if check.startswith("perl:"):
        perl = shutil.which("perl", path=env_path)
        if not perl:
            return None
        ok = subprocess.run([perl, f"-M{check[5:]}", "-e", "1"], capture_output=True).returncode == 0
        return check[5:] if ok else None
    if check.startswith("git:"):
        ex = _git_exec_path(env_path)
        cand = ex / f"git-{check[4:]}" if ex else None
        return str(cand) if cand and cand.exists() else None
    return shutil.which(check, path=env_path)


def installed(names: list[str]) -> dict[str, str | None]:
    """dpkg's version of each package (None when not installed): one dpkg-query for all."""
    if not names or not shutil.which("dpkg-query"):
        return {n: None for n in names}
    res = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status} ${Version}\n", *names],
                         capture_output=True, text=True)
    out: dict[str, str | None] = {n: None for n in names}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1:4] == ["install", "ok", "installed"]:
            out[parts[0].split(":")[0]] = parts[4]
    return out


def missing(stage: str, env_path: str | None = None) -> list[tuple[Package, str]]:
    """(package, the check that failed) for every unmet prerequisite of the stage."""
    out = []
    pkgs = for_stage(stage)
    need_dpkg = [p.name for p in pkgs if not p.checks]
    have = installed(need_dpkg) if need_dpkg else {}
    for p in pkgs:
        if not p.checks:
            if have.get(p.name) is None and shutil.which("dpkg-query"):
                out.append((p, f"package {p.name} not installed"))
            continue
        for c in p.checks:
            if check_one(c, env_path) is None:
                out.append((p, c))
                break
    return out


def missing_all(env_path: str | None = None) -> list[tuple[Package, str]]:
    seen, out = set(), []
    for stage in STAGES:
        for p, c in missing(stage, env_path):
            if p.name not in seen:
                seen.add(p.name)
                out.append((p, c))
    return out


def require(stage: str) -> None:
    """Exit 7, naming the Debian packages, when the stage cannot run on this host."""
    miss = missing(stage, os.environ.get("PATH"))
    if miss:
        what = ", ".join(f"{c} ({p.name})" for p, c in miss)
        pkgs = " ".join(sorted({p.name for p, _ in miss}))
        raise PrereqError(f"the {stage} stage needs {what}: apt-get install {pkgs} (or run scripts/setup.sh)")


def versions(stage: str) -> dict[str, str | None]:
    """The installed versions of the stage's packages: part of every cache key the stage writes."""
    return installed(sorted(p.name for p in packages() if stage in p.stages))


def tool_version(tool: str) -> str:
    """A tool's own `--version` first line, for tools that may not come from a package (PATH overrides)."""
    found = proc.which(tool)
    if not found:
        return "missing"
    res = proc.run([found, "--version"], timeout=30)
    first = (res.stdout or res.stderr).strip().splitlines()
    return f"{found}: {first[0] if first else '?'}"
