"""Running external tools: argument lists, a timeout, the output kept in a log.

Every child runs in its own process group so that a timeout or Ctrl-C can take
down the whole tree (make's compilers, QEMU) and nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool.errors import KptError, PrereqError


@dataclass
class ProcResult:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def which(tool: str, env: dict[str, str] | None = None) -> str | None:
    path = (env or os.environ).get("PATH")
    return shutil.which(tool, path=path)


def require(tool: str, package: str | None = None) -> str:
    found = which(tool)
    if not found:
        hint = f"apt-get install {package}" if package else "see `kpt doctor`"
        raise PrereqError(f"{tool}: not found on PATH ({hint})")
    return found


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _log_header(log, cmd: Sequence[str], cwd) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    if cwd:
        log.write(f"# cwd: {cwd}\n")
    log.flush()


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = 600,
    log: str | os.PathLike | None = None,
    input: str | bytes | None = None,
    check: bool = False,
    text: bool = True,
) -> ProcResult:
    """Run cmd to completion, capturing its output (and appending it to log)."""
    argv = [os.fspath(c) for c in cmd]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise PrereqError(f"{argv[0]}: not found (see `kpt doctor`)") from exc
    timed_out = False
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    except BaseException:
        _kill_group(proc)
        raise
    duration = time.monotonic() - start
    if log:
        with open(log, "a", encoding="utf-8", errors="replace") as fh:
            _log_header(fh, argv, cwd)
            fh.write(out if text else out.decode("utf-8", "replace"))
            fh.write(err if text else err.decode("utf-8", "replace"))
            fh.write(f"# exit {proc.returncode}{' (timed out)' if timed_out else ''} in {duration:.1f}s\n")
    res = ProcResult(argv, proc.returncode, out, err, duration, timed_out)
    if check and not res.ok:
        what = "timed out" if timed_out else f"exited {proc.returncode}"
        tail = (err or out or "").strip().splitlines()[-5:]
        raise KptError(f"{argv[0]} {what}: {' '.join(argv[1:4])}", detail="\n".join(tail))
    return res


def stream(
    cmd: Sequence[str | os.PathLike],
    *,
    on_line: Callable[[str], bool | None] | None = None,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    log: str | os.PathLike,
) -> ProcResult:
    """Run cmd with stdout+stderr merged, line by line into log and on_line.

    on_line returning True stops the process (a verdict was reached). The
    timeout is wall-clock; the process group is always reaped on return.
    """
    argv = [os.fspath(c) for c in cmd]
    start = time.monotonic()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "a", encoding="utf-8", errors="replace")
    _log_header(fh, argv, cwd)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        fh.close()
        raise PrereqError(f"{argv[0]}: not found (see `kpt doctor`)") from exc

    timed_out = False
    stopped = threading.Event()

    def watchdog():
        if timeout is None:
            return
        if not stopped.wait(timeout):
            nonlocal timed_out
            timed_out = True
            _kill_group(proc, grace=1.0)

    dog = threading.Thread(target=watchdog, daemon=True)
    dog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            fh.write(line + "\n")
            fh.flush()
            lines.append(line)
            if len(lines) > 2000:
                del lines[:1000]
            if on_line and on_line(line):
                _kill_group(proc, grace=1.0)
                break
        proc.wait()
    except BaseException:
        _kill_group(proc, grace=1.0)
        raise
    finally:
        stopped.set()
        _kill_group(proc, grace=1.0)
        duration = time.monotonic() - start
        fh.write(f"# exit {proc.returncode}{' (timed out)' if timed_out else ''} in {duration:.1f}s\n")
        fh.close()
    return ProcResult(argv, proc.returncode, "\n".join(lines), "", duration, timed_out)
