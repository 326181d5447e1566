"""Boot phases read from a console as it streams (kpatch_tool/phases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatch_tool import phases

DATA = Path(__file__).parent / "data"

NESTED = """\
SeaBIOS (version 1.16.2-debian-1.16.2-1)
(XEN) [00000000421fdbed] Xen version 4.17.7 (Debian 4.17.7+13) debug=n
(XEN) [    2.967472] *** Building a PV Dom0 ***
[    0.000000] Linux version 6.1.192 (kpt@kpt) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0) #2 SMP
[    2.321489] Unpacking initramfs...
[    2.900000] Freeing initrd memory: 54508K
[    3.100000] Run /sbin/kpt-dom0-init as init process
KTAP version 1
1..3
    ok 3 xenconsoled
kpt-phase: toolstack-up 9.50
    ok 7 xl-create
kpt-phase: xl-create 14.25
kpt-domU: [    0.000000] Linux version 6.1.192 (kpt@kpt) #2 SMP
kpt-domU: [    3.000000] Run /init as init process
ok 1 dom0
kpt-phase: dom0-checks 30.00
kpt-domU: # kpt-init: done at uptime 16.50s
kpt-phase: domU-released 31.00
kpt-phase: domU-gone 33.50
ok 3 domU
# kpt-dom0-init: done at uptime 41.20s
"""


def _feed(mode: str, text: str) -> phases.Tracker:
    t = phases.Tracker(mode)
    for i, line in enumerate(text.splitlines()):
        t.feed(line, float(i))  # the host sees one line a second
    return t


def test_nested_phases_end_at_their_console_lines_in_the_order_they_came():
    t = _feed("xen+domU", NESTED)
    t.finish(30.0)
    got = [(p.name, p.end) for p in t.phases]
    assert got == [("firmware", 1.0), ("xen", 3.0), ("dom0-kernel", 4.0), ("initramfs", 5.0),
                   ("dom0-kernel-init", 6.0), ("toolstack", 10.0), ("xl-create", 12.0), ("domU-kernel", 14.0),
                   ("dom0-checks", 16.0), ("domU-checks", 17.0), ("domU-release", 18.0), ("domU-teardown", 19.0),
                   ("domU-result", 21.0), ("power-off", 30.0)]
    # Each phase lasts from the end of the one before it (in time) to its own end.
    assert [p.seconds for p in t.phases][:3] == [1.0, 2.0, 1.0]
    assert t.phases[-1].seconds == 9.0


def test_phases_carry_the_guests_own_clock_from_printk_and_marks():
    by = {p.name: p for p in _feed("xen+domU", NESTED).phases}
    assert by["initramfs"].guest_clock == 2.9  # printk time
    assert by["toolstack"].guest_clock == 9.5  # dom0's uptime in its mark
    assert by["domU-checks"].guest_clock == 16.5  # the domU's uptime, forwarded by dom0
    assert by["domU-result"].guest_clock == 41.2


def test_the_domus_kernel_lines_do_not_end_dom0s_phases():
    """dom0 forwards the domU's banner with a prefix: it must not count as dom0's kernel."""
    t = _feed("xen+domU", "(XEN) Xen version 4.17.7\nkpt-domU: [ 0.0] Linux version 6.1.192\n")
    assert [p.name for p in t.phases] == ["firmware"]
    assert t.current() == "xen"


def test_a_stopped_boot_names_the_phase_it_stopped_in():
    t = _feed("xen+domU", NESTED.split("kpt-phase: xl-create")[0])
    assert t.current() == "xl-create"
    assert t.where() == "stopped in phase xl-create, after toolstack ended at 10.0s"
    assert phases.Tracker("guest").where() == "stopped in phase firmware, before the firmware finished"


def test_guest_and_xen_modes_have_phases_of_their_own():
    guest = "[ 0.0] Linux version 6.1\n[ 0.5] Unpacking initramfs...\n[ 0.6] Freeing initrd memory: 100K\n" \
            "[ 0.7] Run /init as init process\n# kpt-init: done at uptime 1.10s\n"
    assert [p["name"] for p in phases.from_console("guest", list(enumerate(guest.splitlines())))] == \
        ["firmware", "kernel", "initramfs", "kernel-init", "checks"]
    assert phases.names("xen")[-2:] == ["checks", phases.END]
    with pytest.raises(ValueError):
        phases.Tracker("nope")


def test_a_recorded_nested_console_reaches_every_dom0_phase():
    """Recorded before the marks existed: the console-only phases are still found."""
    lines = (DATA / "nested-console.log").read_text().splitlines()
    got = [p["name"] for p in phases.from_console("xen+domU", [(float(i), s) for i, s in enumerate(lines)])]
    assert got[:5] == ["firmware", "xen", "dom0-kernel", "initramfs", "dom0-kernel-init"]


@pytest.mark.parametrize("bad", [{}, [{"name": "x"}], [{"name": "x", "end": "1", "seconds": 1}], [3]])
def test_malformed_phases_are_named(bad):
    with pytest.raises(TypeError, match="results.json"):
        phases.check_list(bad, "results.json")


def test_xens_banner_ends_the_firmware_on_the_line_seabios_left_open():
    t = _feed("xen", "Booting from ROM..\x1bc\x1b[?7l\x1b[2J(XEN) [00000000f31a6505] Xen version 4.17.7 (Debian)\n"
                     "[    1.145369] Xen version: 4.17.7 (preserve-AD)\n")
    assert [(p.name, p.end) for p in t.phases] == [("firmware", 0.0)]
