"""Boot phases: when each step of a boot ended, read from the console as it streams.

A phase ends at a console line: the firmware at Xen's banner, Xen at dom0's
"Linux version", the kernel at "Unpacking initramfs", and so on; the init
scripts print marks of their own (`kpt-phase: NAME UPTIME`, not KTAP, so the
parser ignores them) with the guest's monotonic clock, and dom0 forwards the
domU's kernel banner, init and marks from the domU's console log as
`kpt-domU: ...` lines while it runs. Each phase records the host's seconds
since QEMU started (the wall time a user waits) and, when the line carries it,
the guest's own clock. A boot that stops early names the phase it stopped in.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# The guest-side marks; dom0-xl-init.sh.j2 and ktap-check.sh.j2 print them.
MARK = "kpt-phase:"
DOMU_PREFIX = "kpt-domU: "

_LINUX = r"Linux version \d"
_UNPACK = r"Unpacking initramfs"
_FREED = r"Freeing initrd memory"
_INIT = r"Run \S+ as init process"

# (phase, what ends it): the phase is named for the work done until that line.
# Lines of the domU arrive with DOMU_PREFIX; the others must not match them.
_GUEST = [
    ("firmware", rf"^{_LINUX}"),
    ("kernel", rf"^{_UNPACK}"),
    ("initramfs", rf"^{_FREED}"),
    ("kernel-init", rf"^{_INIT}"),
    ("checks", r"^# kpt-init: done"),
]
_XEN = [
    # Not anchored: SeaBIOS's "Booting from ROM.." may end without a newline, and Xen's
    # banner then follows on the same console line.
    ("firmware", r"\(XEN\) .*Xen version \d"),
    ("xen", rf"^{_LINUX}"),
    ("dom0-kernel", rf"^{_UNPACK}"),
    ("initramfs", rf"^{_FREED}"),
    ("dom0-kernel-init", rf"^{_INIT}"),
]
_XEN_ONLY = [("checks", r"^# kpt-init: done")]
_DOMU = [
    ("toolstack", rf"^{MARK} toolstack-up\b"),
    ("xl-create", rf"^{MARK} xl-create\b"),
    ("domU-kernel", rf"^{DOMU_PREFIX}(?:\[[ \d.]+\] )?{_INIT}"),
    ("domU-checks", rf"^{DOMU_PREFIX}# kpt-init: done"),
    ("dom0-checks", rf"^{MARK} dom0-checks\b"),
    ("domU-release", rf"^{MARK} domU-released\b"),  # dom0's release accepted
    ("domU-teardown", rf"^{MARK} domU-gone\b"),  # the domU powered off and destroyed
    ("domU-result", r"^# kpt-dom0-init: done"),
]
PHASES = {"guest": _GUEST, "xen": _XEN + _XEN_ONLY, "xen+domU": _XEN + _DOMU}
END = "power-off"  # from the last phase to QEMU's exit (or the runner stopping it)

_TS = re.compile(r"^\[\s*(\d+\.\d+)\] ?")
_XEN_TS = re.compile(r"^\(XEN\) \[\s*(\d+\.\d+)\]")
_UPTIME = re.compile(r"(?:uptime )?(\d+\.\d+)s?\s*$")
_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)")


@dataclass
class Phase:
    name: str
    end: float  # host seconds from QEMU's start to the line that ended it
    seconds: float  # from the end of the phase before it (in time) to this end
    guest_clock: float | None = None  # the guest's own clock on that line (printk time, uptime)
    line: str = ""


def names(mode: str) -> list[str]:
    return [name for name, _ in PHASES[mode]] + [END]


class Tracker:
    """Feed console lines with their host time; ask for the phases that ended and the current one."""

    def __init__(self, mode: str):
        if mode not in PHASES:
            raise ValueError(f"no phases for mode {mode}")
        self.mode = mode
        self._pending = [(name, re.compile(rx)) for name, rx in PHASES[mode]]
        self.phases: list[Phase] = []

    def feed(self, line: str, at: float) -> Phase | None:
        text = _ANSI.sub("", line).replace("\r", "").strip()
        if not text:
            return None
        body = text
        clock = None
        if m := _TS.match(text):
            body, clock = text[m.end():], float(m.group(1))
        for i, (name, rx) in enumerate(self._pending):
            if rx.search(body):
                del self._pending[i]
                return self._add(name, at, clock if clock is not None else _guest_clock(text), text)
        return None

    def _add(self, name: str, at: float, clock: float | None, text: str) -> Phase:
        prev = self.phases[-1].end if self.phases else 0.0
        p = Phase(name, round(at, 3), round(max(at - prev, 0.0), 3), clock, text[:160])
        self.phases.append(p)
        return p

    def finish(self, at: float) -> None:
        """QEMU exited (or was stopped) at host time `at`: the power-off phase ends there."""
        if not any(p.name == END for p in self.phases):
            self._add(END, at, None, "")

    def current(self) -> str:
        """The phase a boot is in now: the first one (in the mode's order) that has not ended."""
        return self._pending[0][0] if self._pending else END

    def last(self) -> Phase | None:
        return self.phases[-1] if self.phases else None

    def where(self) -> str:
        """For a timeout or hang: `in phase X (last: Y ended at Ns)`."""
        last = self.last()
        after = f", after {last.name} ended at {last.end:.1f}s" if last else ", before the firmware finished"
        return f"stopped in phase {self.current()}{after}"

    def to_list(self) -> list[dict]:
        return [asdict(p) for p in self.phases]


def _guest_clock(text: str) -> float | None:
    if text.startswith("(XEN)"):
        m = _XEN_TS.match(text)
        return float(m.group(1)) if m else None
    if MARK in text or "kpt-init: done" in text or "kpt-dom0-init: done" in text:
        m = _UPTIME.search(text)
        return float(m.group(1)) if m else None
    return None


def from_console(mode: str, lines: list[tuple[float, str]]) -> list[dict]:
    """Phases of a recorded console (host time, line) list; for tests and re-reading a log."""
    t = Tracker(mode)
    for at, line in lines:
        t.feed(line, at)
    return t.to_list()


def check_list(data, where: str) -> list[dict]:
    """Phases read back from results.json or a manifest: a list of {name, end, seconds}."""
    if not isinstance(data, list):
        raise TypeError(f"{where}: 'phases' must be a list")
    out = []
    for i, p in enumerate(data):
        if not (isinstance(p, dict) and isinstance(p.get("name"), str)
                and all(isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)
                        for k in ("end", "seconds"))):
            raise TypeError(f"{where}: phases[{i}] needs a name string and end and seconds numbers")
        out.append(p)
    return out
