"""Caches shared across CI runners: finished kernel builds, and ccache's remote storage.

Two settings, in kpt.toml or (for a pipeline) in the environment, which wins:

    [fleet]
    shared_cache = "/srv/kpt-shared"               # KPT_SHARED_CACHE
    ccache_remote = "file:/srv/kpt-shared/ccache"  # KPT_CCACHE_REMOTE

shared_cache is a folder every runner mounts (NFS, a bind mount...). A build
that ran make is published there as `builds/<key>.tar`, keyed by the identity
the local build stamp keys on (build.py `cached_build`: source state, config
hash, compiler, the host's build packages, kpt's build format) less the
source folder's path, which differs between runners and does not reach the
output (kbuild sees `..` as its srctree). A runner whose own cache misses
fetches that tar instead of starting make. The source is named by its content
(the checkout's git tree and its uncommitted changes), not its commit: two
runners' imports of the same Debian version are the same source even when
their commits differ (another kpt's import message, say).

ccache_remote is ccache's `remote_storage` (ccache 4.4+; `file:DIR` or any URL
ccache knows): object files compiled on one runner are hits on the next. Each
make runs with a stats log of its own, so the run's manifest says how many
compilations hit (locally or remotely) and missed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool.errors import UsageError

ENV_SHARED = "KPT_SHARED_CACHE"
ENV_CCACHE = "KPT_CCACHE_REMOTE"


@dataclass(frozen=True)
class FleetSettings:
    shared_cache: Path | None = None
    ccache_remote: str | None = None


def settings(data: dict, where: Path | str = "kpt.toml") -> FleetSettings:
    """[fleet] of kpt.toml, the environment's KPT_SHARED_CACHE / KPT_CCACHE_REMOTE over it."""
    fleet = data.get("fleet") or {}
    if not isinstance(fleet, dict):
        raise UsageError(f"{where}: 'fleet' must be a [fleet] table")
    unknown = set(fleet) - {"shared_cache", "ccache_remote"}
    if unknown:
        raise UsageError(f"{where}: [fleet] unknown key(s) {', '.join(sorted(unknown))} (shared_cache, ccache_remote)")
    for key in ("shared_cache", "ccache_remote"):
        if key in fleet and not (isinstance(fleet[key], str) and fleet[key].strip()):
            raise UsageError(f"{where}: [fleet] '{key}' must be a non-empty string")
    shared = os.environ.get(ENV_SHARED) or fleet.get("shared_cache")
    remote = os.environ.get(ENV_CCACHE) or fleet.get("ccache_remote")
    return FleetSettings(Path(shared).expanduser() if shared else None, remote or None)


def key(identity: dict) -> str:
    """The shared name of a build: its identity (source by content) without the runner's source path."""
    portable = {k: v for k, v in identity.items() if k != "srctree"}
    return hashlib.sha256(json.dumps(portable, sort_keys=True).encode()).hexdigest()[:32]


def _tar_path(shared: Path, k: str) -> Path:
    return shared / "builds" / f"{k}.tar"


def publish(shared: Path, k: str, build_dir: Path, files: list[str], stamp: dict) -> Path | None:
    """Put a finished build's files into the shared folder (atomically: a tar, then rename).

    A folder that cannot be written is not an error of the build: the result is
    only not shared (None).
    """
    target = _tar_path(shared, k)
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w") as tar:
            for rel in files:
                p = build_dir / rel
                if p.exists():
                    tar.add(p, arcname=rel)
            data = json.dumps(stamp, indent=1).encode()
            info = tarfile.TarInfo("kpt-shared-stamp.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return target


def fetch(shared: Path, k: str, build_dir: Path) -> dict | None:
    """Unpack a build another runner published into build_dir; its stamp, or None when absent."""
    src = _tar_path(shared, k)
    if not src.is_file():
        return None
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers() if m.name != "kpt-shared-stamp.json"]
            if any(m.name.startswith("/") or ".." in Path(m.name).parts or m.islnk() for m in members):
                return None  # not a tar kpt wrote: nothing lands outside build_dir
            stamp_member = tar.extractfile("kpt-shared-stamp.json")
            stamp = json.loads(stamp_member.read()) if stamp_member else None
            # Debian 12's Python 3.11.2 may predate extraction filters (3.11.4): checked above either way.
            kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
            tar.extractall(build_dir, members=members, **kw)  # type: ignore[arg-type]
    except (OSError, tarfile.TarError, KeyError, ValueError):
        return None  # a torn or foreign file: build locally
    return stamp if isinstance(stamp, dict) else None


# --------------------------------------------------------------------------
# ccache


@contextmanager
def ccache_configured(remote: str | None, stats_log: Path) -> Iterator[None]:
    """While a build runs: ccache (reached through make's environment) uses the remote
    storage and logs every compilation's outcome to stats_log. The process
    environment is restored afterwards."""
    stats_log.unlink(missing_ok=True)
    new = {"CCACHE_STATSLOG": str(stats_log)}
    if remote:
        new["CCACHE_REMOTE_STORAGE"] = remote
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ccache_stats(stats_log: Path) -> dict | None:
    """Hits and misses of the compilations a stats log recorded (None: no log, no ccache run)."""
    try:
        text = stats_log.read_text(errors="replace")
    except OSError:
        return None
    calls = hits = remote = misses = 0
    current: set[str] = set()

    def close() -> None:
        nonlocal calls, hits, remote, misses
        if not current:
            return
        if current & {"direct_cache_hit", "preprocessed_cache_hit"}:
            calls, hits = calls + 1, hits + 1
            remote += "remote_storage_hit" in current
        elif "cache_miss" in current:
            calls, misses = calls + 1, misses + 1

    for line in text.splitlines():
        if line.startswith("#"):
            close()
            current = set()
        elif line.strip():
            current.add(line.strip())
    close()
    return {"compilations": calls, "hits": hits, "remote_hits": remote, "misses": misses,
            "hit_rate": round(hits / calls, 3) if calls else None}
