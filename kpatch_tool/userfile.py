"""Reading files the user names: only regular files, decoded or refused by name.

A FIFO where a file is expected blocked kpt forever in open(); a folder or
undecodable bytes ended in a traceback. Every reader of user input goes
through here and gets a UsageError (exit 2) naming the file instead.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kpatch_tool.errors import UsageError


def read_bytes(path: Path | str, what: str = "file") -> bytes:
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{path}: cannot read the {what}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: a folder, not a {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: a folder, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file (a FIFO, socket or device), not a {what}")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise UsageError(f"{path}: a folder, not a {what}") from None
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_text(path: Path | str, what: str = "file") -> str:
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: the {what} is not UTF-8 text") from None
