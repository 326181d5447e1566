"""Progress of a run: which stage, its detail (patch N/M, make step, console
tail) and the elapsed time. Stages report through a Reporter; the CLI picks a
live rich view on a terminal and plain timestamped lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text


@dataclass
class StageLine:
    name: str
    status: str = "pending"  # pending, running, ok, cached, failed, skipped
    seconds: float = 0.0
    note: str = ""
    started: float = 0.0


class Reporter:
    """The do-nothing reporter (library calls, tests)."""

    def stage(self, name: str) -> None: ...

    def detail(self, msg: str) -> None: ...

    def done(self, name: str, status: str, seconds: float, note: str = "") -> None: ...

    def close(self) -> None: ...


class PlainReporter(Reporter):
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last_detail = 0.0

    def _out(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=self.stream, flush=True)

    def stage(self, name):
        self._out(f"== {name}")

    def detail(self, msg):
        # make and the console say a lot; a line every few seconds is plenty for a log.
        now = time.monotonic()
        if now - self._last_detail >= 5.0:
            self._last_detail = now
            self._out(f"   {msg}")

    def done(self, name, status, seconds, note=""):
        self._out(f"== {name}: {status} ({seconds:.1f}s){' - ' + note if note else ''}")


@dataclass
class LiveReporter(Reporter):
    stages: list[str]
    title: str = ""
    console: Console = field(default_factory=lambda: Console(stderr=True))

    def __post_init__(self):
        self.lines = {n: StageLine(n) for n in self.stages}
        self.current = ""
        self.detail_text = ""
        self.t0 = time.monotonic()
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()

    def _render(self):
        table = Table(title=self.title, show_header=True, header_style="bold", expand=False)
        table.add_column("stage")
        table.add_column("status")
        table.add_column("time", justify="right")
        table.add_column("note")
        colours = {"ok": "green", "cached": "cyan", "failed": "red", "running": "yellow", "skipped": "dim"}
        for line in self.lines.values():
            secs = line.seconds if line.status != "running" else time.monotonic() - line.started
            t = f"{secs:.1f}s" if line.status != "pending" else ""
            c = colours.get(line.status, "white")
            table.add_row(line.name, f"[{c}]{line.status}[/{c}]", t, escape(line.note))
        foot = Text(f"{time.monotonic() - self.t0:.0f}s  {self.detail_text}"[: self.console.width - 2], style="dim")
        return Group(table, foot)

    def stage(self, name):
        self.lines.setdefault(name, StageLine(name))
        self.lines[name].status = "running"
        self.lines[name].started = time.monotonic()
        self.current = name
        self.live.update(self._render())

    def detail(self, msg):
        self.detail_text = msg
        self.live.update(self._render())

    def done(self, name, status, seconds, note=""):
        line = self.lines.setdefault(name, StageLine(name))
        line.status, line.seconds, line.note = status, seconds, note
        self.detail_text = ""
        self.live.update(self._render())

    def close(self):
        self.live.update(self._render())
        self.live.__exit__(None, None, None)


def for_terminal(stages: list[str], title: str = "") -> Reporter:
    if sys.stderr.isatty():
        return LiveReporter(stages, title)
    return PlainReporter()
