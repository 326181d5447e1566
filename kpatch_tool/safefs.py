"""Writing the user's files so that a crash, a kill or a full disk never loses them.

A `Txn` changes a set of files (a series' patch folder, its series.toml) all
or nothing: the new contents are written beside their targets and fsynced, a
journal naming every staged file and every removal is made durable, and only
then are the staged files renamed over their targets. The journal is written
before the first staged byte, so whatever moment the process dies at, the next
kpt command (`recover`, run when a series is loaded) finds it and either rolls
the change forward (the journal was committed: every new file is complete) or
back (it was not: the staged files are deleted, the targets were never
touched). Files the change does not name keep their bytes, inode and mtime.

`crash_point` lets the tests kill the process between any two steps
(KPT_TEST_CRASH_AT=N: SIGKILL at the Nth step), which is how the promise
above is checked.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import signal
import time
from pathlib import Path

from kpatch_tool.errors import UsageError

JOURNAL = ".kpt-journal.json"
STAGED_SUFFIX = ".kpt-new"
_steps = 0


def crash_point(label: str) -> None:
    """A step boundary: the tests' SIGKILL lands here (never set outside tests)."""
    global _steps
    at = os.environ.get("KPT_TEST_CRASH_AT")
    if not at:
        return
    _steps += 1
    if _steps == int(at):
        trace = os.environ.get("KPT_TEST_CRASH_LOG")
        if trace:
            with open(trace, "a") as f:
                f.write(f"{_steps} {label}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def no_space(path, exc: OSError | None = None) -> UsageError:
    return UsageError(f"no space left on {path}")


def os_error(exc: OSError, what: str = "write") -> UsageError:
    """One line for an OSError from writing the user's files (ENOSPC, EPERM, EROFS...)."""
    where = exc.filename or "?"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(where)
    return UsageError(f"cannot {what} {where}: {exc.strerror or exc}")


# A run hashes its big files more than once (the image stage, then the boot's cache key:
# dom0's root filesystem twice); a file not changed since (same inode, size and mtime) is
# not read again in this process. Across runs, the memo file under kpt's cache keeps the
# digests of big files keyed the way git's index is: path, device, inode, size, mtime and
# ctime (which no user tool can set back). A file changed in the last seconds is not
# remembered: its mtime may not have moved on a further change yet (git's "racy" case).
_HASHES: dict[tuple, str] = {}
_MEMO_PATH: Path | None = None
_MEMO: dict[str, list] | None = None
_MEMO_NEW: dict[str, list] = {}
MEMO_MIN_SIZE = 256 * 1024
MEMO_MAX_ENTRIES = 20000
RACY_NS = 3_000_000_000


def use_digest_memo(path: Path | None) -> None:
    """Remember big files' digests in path (a JSON file, written at exit) from now on."""
    global _MEMO_PATH, _MEMO
    if path == _MEMO_PATH:
        return
    flush_digest_memo()
    if _MEMO_PATH is None:
        atexit.register(flush_digest_memo)
    _MEMO_PATH, _MEMO = path, None


def _memo() -> dict[str, list]:
    global _MEMO
    if _MEMO is None:
        try:
            data = json.loads(_MEMO_PATH.read_text()) if _MEMO_PATH else {}
        except (OSError, ValueError):
            data = {}
        _MEMO = data if isinstance(data, dict) else {}
    return _MEMO


def flush_digest_memo() -> None:
    """Write what this process learnt, merged with what others wrote meanwhile (a memo:
    losing an entry to a race only costs a re-read)."""
    if not _MEMO_PATH or not _MEMO_NEW:
        return
    try:
        on_disk = json.loads(_MEMO_PATH.read_text())
        if not isinstance(on_disk, dict):
            on_disk = {}
    except (OSError, ValueError):
        on_disk = {}
    on_disk.update(_MEMO_NEW)
    if len(on_disk) > MEMO_MAX_ENTRIES:
        on_disk = {k: v for k, v in on_disk.items() if os.path.exists(k)}
        on_disk = dict(list(on_disk.items())[-MEMO_MAX_ENTRIES:])
    tmp = _MEMO_PATH.with_name(f".{_MEMO_PATH.name}.{os.getpid()}{STAGED_SUFFIX}")
    try:
        _MEMO_PATH.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(on_disk))
        os.replace(tmp, _MEMO_PATH)
    except OSError:
        tmp.unlink(missing_ok=True)
        return  # a read-only or full cache: the next run hashes again
    _MEMO_NEW.clear()


def sha256_file(path: Path) -> str:
    """A file's sha256, read in 1 MiB pieces (kernels, .debs, images)."""
    st = os.stat(path)
    real = os.path.realpath(path)
    sig = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    key = (real, *sig)
    if key in _HASHES:
        return _HASHES[key]
    remember = _MEMO_PATH is not None and st.st_size >= MEMO_MIN_SIZE
    if remember:
        known = _memo().get(real)
        if isinstance(known, list) and len(known) == 6 and known[:5] == sig and isinstance(known[5], str):
            _HASHES[key] = known[5]
            return known[5]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    _HASHES[key] = h.hexdigest()
    if remember and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        _memo()[real] = _MEMO_NEW[real] = [*sig, _HASHES[key]]
    return _HASHES[key]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync one file (not atomic: callers write to a name of their own)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except OSError as exc:
        if not exc.filename:
            exc.filename = str(path)
        raise
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Atomically replace one file: a reader sees the old or the new bytes, never a mix."""
    tmp = path.with_name(f".{path.name}{STAGED_SUFFIX}")
    try:
        write_durable(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def staged_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{STAGED_SUFFIX}")


class Txn:
    """All-or-nothing writes and removals of files under `root` (see the module doc)."""

    def __init__(self, root: Path):
        self.root = root
        self.journal = root / JOURNAL
        self.writes: dict[Path, bytes] = {}
        self.removes: list[Path] = []

    def write(self, target: Path, data: bytes) -> None:
        self.writes[target] = data

    def remove(self, target: Path) -> None:
        self.removes.append(target)

    def _record(self, state: str) -> None:
        rec = {"state": state, "pid": os.getpid(),
               "writes": [[str(t), str(staged_name(t))] for t in self.writes],
               "removes": [str(t) for t in self.removes]}
        replace_file(self.journal, json.dumps(rec, indent=1).encode())

    def commit(self) -> None:
        if not self.writes and not self.removes:
            return
        for t in [*self.writes, *self.removes]:
            if self.root not in t.parents:
                raise UsageError(f"internal: {t} lies outside {self.root}")
        try:
            if self.journal.exists():
                recover(self.root)
            crash_point("journal: prepare")
            self._record("prepare")
            for t, data in self.writes.items():
                crash_point(f"stage {t.name}")
                t.parent.mkdir(parents=True, exist_ok=True)
                write_durable(staged_name(t), data)
            for d in {t.parent for t in self.writes}:
                fsync_dir(d)
            crash_point("journal: commit")
            self._record("commit")
        except OSError as exc:
            _rollback(self.root, _read(self.journal))
            raise os_error(exc) from None
        except BaseException:
            _rollback(self.root, _read(self.journal))
            raise
        # Past the commit record the change is decided: finishing it is recovery's job too.
        _roll_forward(self.root, _read(self.journal))


def _read(journal: Path) -> dict | None:
    try:
        rec = json.loads(journal.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _inside(root: Path, p: str) -> Path | None:
    """A journal path, only if it lies under root: a doctored journal removes nothing else."""
    path = Path(p)
    return path if root.resolve() in path.resolve().parents else None


def _rollback(root: Path, rec: dict | None) -> None:
    for _, staged in (rec or {}).get("writes", []):
        s = _inside(root, staged)
        if s and s.name.endswith(STAGED_SUFFIX):
            s.unlink(missing_ok=True)
    (root / JOURNAL).unlink(missing_ok=True)


def _roll_forward(root: Path, rec: dict | None) -> None:
    try:
        for target, staged in (rec or {}).get("writes", []):
            t, s = _inside(root, target), _inside(root, staged)
            if t and s and s.exists():
                crash_point(f"rename {t.name}")
                os.replace(s, t)
        for target in (rec or {}).get("removes", []):
            t = _inside(root, target)
            if t:
                crash_point(f"remove {t.name}")
                t.unlink(missing_ok=True)
        dirs = {Path(t).parent for t, _ in (rec or {}).get("writes", [])}
        dirs |= {Path(t).parent for t in (rec or {}).get("removes", [])}
        for d in dirs:
            if d.is_dir():
                fsync_dir(d)
        crash_point("journal: done")
        (root / JOURNAL).unlink(missing_ok=True)
    except OSError as exc:
        raise os_error(exc) from None


def recover(root: Path) -> bool:
    """Finish or undo a change an earlier kpt left half-done under root; True if there was one."""
    journal = root / JOURNAL
    if not journal.exists():
        return False
    rec = _read(journal)
    if rec and rec.get("state") == "commit":
        _roll_forward(root, rec)
    else:
        _rollback(root, rec)
    return True


def extract_tar(tar, dest: Path, members=None) -> None:
    """Unpack a tar of plain files and folders into dest; ValueError names a member that could land
    outside it (absolute or `..` names, hard links, devices, symlinks leaving the tree; a
    relative symlink within it is kept).

    Python's extraction filters (3.11.4) are not in Debian 12's 3.11.2, so the members
    are checked here either way, and the "data" filter is used where it exists."""
    import tarfile

    members = list(tar.getmembers() if members is None else members)
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or m.islnk() or m.isdev() or (
                m.issym() and (m.linkname.startswith("/") or ".." in Path(m.linkname).parts)):
            raise ValueError(f"tar member '{m.name}' would land outside {dest}")
    kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(dest, members=members, **kw)
