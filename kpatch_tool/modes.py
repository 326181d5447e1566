"""The modes a run can have, and where each runs its checks: one registry.

`kpt ci --mode` takes a run mode; the images are built for image modes (the
domU's own image is one); a smoke check's `where` names a place. Each run
mode says what it boots (Xen or not, a domU or not), the profile and boot
timeout it defaults to, and the image modes it builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpatch_tool.errors import UsageError

# Where a check can run (series.toml [[smoke]] where).
PLACES = ("guest", "dom0", "domU")


@dataclass(frozen=True)
class Mode:
    name: str
    xen: bool  # boots Xen with the kernel as dom0
    domu: bool  # starts a PV domU (and, for a series that has one, its device model)
    profile: str  # the config profile when neither the command line nor series.toml say
    # TCG on 2 shared cores: a nested boot took 113 s alone and over 420 s next to builds.
    timeout: float
    places: tuple[str, ...]  # where its checks run


RUN_MODES = {m.name: m for m in (
    Mode("guest", xen=False, domu=False, profile="guest", timeout=120, places=("guest",)),
    Mode("xen", xen=True, domu=False, profile="xen-dom0", timeout=240, places=("dom0",)),
    Mode("xen+domU", xen=True, domu=True, profile="xen-dom0", timeout=720, places=("dom0", "domU")),
)}
MODES = tuple(RUN_MODES)

# Images are built per place: a guest's, dom0's (xen) and the domU's own.
IMAGE_MODES = {"guest": "guest", "xen": "dom0", "domU": "domU"}


def run_mode(name: str, what: str = "--mode") -> Mode:
    try:
        return RUN_MODES[name]
    except KeyError:
        raise UsageError(f"{what} {name}: one of {', '.join(MODES)}") from None
