"""Build tools from PyPI where Debian 12's are too old: venvs of kpt's own.

QEMU 8.1 and later configure through python/scripts/mkvenv.py: configure makes
a `pyvenv` in the build folder that sees the packages of the python it was
given (`--python=`), and takes meson from there only (`--meson=` is gone).
The tree's pythondeps.toml says which meson it accepts (`accepted`) and which
it would install (`installed`); Debian's `+ds` sources ship no python/wheels.
When the host's meson (bookworm: 1.0.1) is not accepted, kpt installs the
tree's `installed` version from PyPI, once, into <cache>/pytools/meson-VERSION/
(a venv of the host's python3), and gives configure that venv's python. The
wheel's sha256 is checked against KNOWN_WHEELS when kpt knows the version, and
the version and sha256 are part of the QEMU build's identity: another meson is
another build. Nothing is installed on the host.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import KptError, PrereqError, UsageError
from kpatch_tool.safefs import replace_file, sha256_file

# Wheels kpt has checked: (name, version) -> the sha256 PyPI serves for it.
KNOWN_WHEELS = {
    ("meson", "1.9.0"): "45e51ddc41e37d961582d06e78c48e0f9039011587f3495c4d6b0781dad92357",
}
DONE = "kpt-pytools.json"
_CLAUSE_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9A-Za-z.]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One package of a tree's pythondeps.toml group."""

    name: str
    accepted: str
    installed: str | None
    source: Path


@dataclass(frozen=True)
class PyEnv:
    """A venv of kpt's own with one pinned package in it."""

    path: Path
    name: str
    version: str
    wheel_sha256: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python3"

    def identity(self) -> dict:
        return {"name": self.name, "version": self.version, "wheel_sha256": self.wheel_sha256,
                "python": _host_python_version()}


def _host_python_version() -> str:
    res = proc.run(["python3", "--version"], timeout=30)
    return (res.stdout or res.stderr).strip()


def requirement(srctree: Path, group: str = "meson", name: str = "meson") -> Requirement | None:
    """The tree's pythondeps.toml entry for name in group; None when the tree has no pythondeps.toml."""
    path = Path(srctree) / "pythondeps.toml"
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it: {exc}") from None
    entry = data.get(group, {}).get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("accepted", ""), str):
        raise UsageError(f"{path}: no [{group}] {name} = {{ accepted = ..., installed = ... }} entry")
    accepted = entry.get("accepted", "")
    installed = entry.get("installed")
    if installed is not None and not (isinstance(installed, str) and re.fullmatch(r"[0-9][0-9A-Za-z.]*", installed)):
        raise UsageError(f"{path}: [{group}] {name}: installed = {installed!r} is not a version")
    for clause in filter(None, (c.strip() for c in accepted.split(","))):
        if not _CLAUSE_RE.match(clause):
            raise UsageError(f"{path}: [{group}] {name}: accepted = {accepted!r}: cannot read '{clause}'")
    return Requirement(name, accepted, installed, path)


def _key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", version.strip()) if p)


def satisfies(version: str, accepted: str) -> bool:
    """Whether version meets every clause of a PEP 440-style spec (`>=1.5.0,<2`)."""
    for clause in filter(None, (c.strip() for c in accepted.split(","))):
        m = _CLAUSE_RE.match(clause)
        if not m:
            raise UsageError(f"version spec '{accepted}': cannot read '{clause}'")
        have, want = _key(version), _key(m.group(2))
        width = max(len(have), len(want))
        v, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ops = {">=": v.__ge__, "<=": v.__le__, "==": v.__eq__, "!=": v.__ne__, ">": v.__gt__, "<": v.__lt__}
        if not ops[m.group(1)](want):
            return False
    return True


def host_version(tool: str) -> str | None:
    """The host's `tool --version` (meson prints the bare version); None when missing."""
    found = proc.which(tool)
    if not found:
        return None
    res = proc.run([found, "--version"], timeout=60)
    out = res.stdout.strip().splitlines()
    return out[0].strip() if res.ok and out else None


def ensure(cache_dir: Path, req: Requirement, progress=None) -> PyEnv:
    """The venv with req's `installed` version, made (from PyPI) on first use."""
    if not req.installed:
        raise UsageError(f"{req.source}: [{req.name}] has no installed = version for kpt to install")
    root = Path(cache_dir) / "pytools"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{req.name}-{req.installed}"
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = _read_done(path)
        if done is None:
            if progress:
                progress(f"installing {req.name} {req.installed} from PyPI into {path} "
                         f"(host's {req.name}: {host_version(req.name) or 'none'}; {req.source.name}: {req.accepted})")
            done = _create(path, req.name, req.installed)
    return PyEnv(path, req.name, done["version"], done["wheel_sha256"])


def _read_done(path: Path) -> dict | None:
    try:
        data = json.loads((path / DONE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (path / "bin" / "python3").exists():
        return None
    return data


def _create(path: Path, name: str, version: str) -> dict:
    """venv + pip download (binary only) + hash check + offline install; DONE is written last."""
    shutil.rmtree(path, ignore_errors=True)
    log = path.parent / f"{path.name}.log"
    log.write_text("")
    res = proc.run(["python3", "-m", "venv", str(path)], timeout=600, log=log)
    if not res.ok:
        shutil.rmtree(path, ignore_errors=True)
        raise PrereqError(f"python3 -m venv {path} failed (apt-get install python3-venv; log {log})")
    py = path / "bin" / "python3"
    wheels = path / "wheels"
    res = proc.run([py, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--dest", wheels, f"{name}=={version}"], timeout=900, log=log)
    found = sorted(wheels.glob(f"{name}-{version}-*.whl")) if wheels.is_dir() else []
    if not res.ok or not found:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise PrereqError(f"{name} {version}: cannot fetch it from PyPI ({tail[0]}; log {log}); "
                          f"kpt needs it because Debian 12's {name} is too old for this tree")
    wheel = found[0]
    digest = sha256_file(wheel)
    known = KNOWN_WHEELS.get((name, version))
    if known and digest != known:
        raise KptError(f"{wheel.name}: sha256 {digest} is not the {known} kpt knows (log {log})",
                       exit_code=PrereqError.exit_code)
    res = proc.run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--no-index",
                    wheel], timeout=900, log=log)
    if not res.ok:
        raise PrereqError(f"{wheel.name}: pip install into {path} failed (log {log})")
    data = {"name": name, "version": version, "wheel": wheel.name, "wheel_sha256": digest, "checked": bool(known)}
    replace_file(path / DONE, json.dumps(data, indent=1).encode())
    return data
