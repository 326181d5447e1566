"""The run folder's format: out/<run-id>/ with manifest.json, logs/ and the stage records.

Both the orchestrator (pipeline) and the report read and write it; neither
imports the other for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import safefs
from kpatch_tool.errors import KptError, UsageError
from kpatch_tool.workspace import Workspace

MANIFEST = "manifest.json"
# The stages of every run, in order; a series with a device model adds "qemu" after "build".
STAGES = ["trees", "apply", "config", "build", "image", "boot", "report"]


@dataclass
class StageRecord:
    name: str
    status: str  # ok, cached, failed, skipped
    start: float
    end: float
    log: str = ""
    note: str = ""
    exit_code: int = 0

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 2)


class WorkspaceLock:
    """One `kpt ci` per workspace at a time; the holder is named in the refusal."""

    def __init__(self, out_dir: Path, run_id: str):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".kpt-ci.lock"
        self.run_id = run_id
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another run"
            self.fh.close()
            raise UsageError(f"workspace is busy: {holder} holds {self.path}; wait for it or stop it") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"kpt ci run {self.run_id} (pid {os.getpid()})\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        self.fh.seek(0)
        self.fh.truncate()
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def new_run_dir(ws: Workspace, label: str) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    for n in range(100):
        run_id = f"{stamp}-{safe}" + (f"-{n}" if n else "")
        path = ws.out_dir / run_id
        try:
            path.mkdir(parents=True)
            return run_id, path
        except FileExistsError:
            continue
    raise KptError(f"cannot make a run folder under {ws.out_dir}")


class Manifest:
    """manifest.json, rewritten atomically after every stage; `complete` only at the end."""

    def __init__(self, run_dir: Path, data: dict):
        self.path = run_dir / MANIFEST
        self.data = data
        self.write()

    def write(self) -> None:
        safefs.replace_file(self.path, json.dumps(self.data, indent=1, default=str).encode())


def read_manifest(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder (was it deleted?)")
    from kpatch_tool.userfile import read_text

    if not path.exists():
        raise UsageError(f"{path}: missing; not a kpt run folder")
    try:
        data = json.loads(read_text(path, "run manifest"))
    except ValueError as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    check_manifest(path, data)
    return data


def check_manifest(path: Path, data) -> None:
    """The fields the report reads, with their types: a hand-edited or truncated
    manifest is named, not a TypeError deep in the HTML template."""
    def bad(what):
        raise UsageError(f"{path}: not a kpt run manifest ({what})")

    num = (int, float)
    if not isinstance(data, dict):
        bad("not a JSON object")
    if not isinstance(data.get("run_id"), str):
        bad("'run_id' must be a string")
    inp = data.get("inputs")
    if not isinstance(inp, dict) or not isinstance(inp.get("mode"), str):
        bad("'inputs' must be an object with a 'mode' string")
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        bad("'stages' must be a list")
    for i, st in enumerate(stages):
        if not (isinstance(st, dict) and isinstance(st.get("name"), str) and isinstance(st.get("status"), str)
                and isinstance(st.get("start"), num) and isinstance(st.get("end"), num)
                and isinstance(st.get("note", ""), str)):
            bad(f"stages[{i}] needs name and status strings and start and end numbers")
    err = data.get("error")
    if err is not None and not (isinstance(err, dict) and isinstance(err.get("message", ""), str)):
        bad("'error' must be an object with a 'message' string")
