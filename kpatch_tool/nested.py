"""xen+domU mode: Xen in QEMU, our kernel as dom0 with Debian's toolstack, and a
PV domU (the same kernel) started by `xl create` with a vif on a bridge.

The outer QEMU gets 2 vCPUs, and dom0 and the domU 2 each, so multi-queue
netback and netfront are exercised. dom0's init (templates/dom0-xl-init.sh.j2)
prints one KTAP document: its own checks, the series' dom0 checks, and the
domU's document (read from the domU's console log) as a subtest, so one parser
and one results file cover all three places.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from kpatch_tool import boot as bootmod
from kpatch_tool import image, rootfs
from kpatch_tool.workspace import Workspace

DOMU = "kpt-domU"
DOM0_IP = "10.0.0.1"
DOMU_IP = "10.0.0.2"
RELEASE_PORT = 7777
SINK_PORT = 5001
MEMORY = 1536
DOM0_MEM = 768
DOMU_TIMEOUT = 120  # seconds dom0 waits for the domU to finish after releasing it

# dom0 side, in order; $D (domain id) and $VIF exist after xl-create.
DOM0_CHECKS = [
    ("xenstored", "xenstored --pid-file /run/xen/xenstored.pid >/dev/null 2>&1; sleep 0.5; xenstore-ls / >/dev/null && echo up", "up", 30),
    ("xen-init-dom0", "xen-init-dom0 >/dev/null 2>&1 && xenstore-read /local/domain/0/name", "Domain-0", 30),
    ("xenconsoled", "xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console >/dev/null 2>&1 && echo started", "started", 30),
    ("netback-module", "modprobe xen-netback 2>&1 || true; ls -d /sys/bus/xen-backend/drivers/vif", "vif", 30),
    ("bridge", "ip link add name xenbr0 type bridge stp_state 0 forward_delay 0 && ip addr add $DOM0_IP/24 dev xenbr0 && ip link set xenbr0 up && ip -br addr show xenbr0", "UP|UNKNOWN", 20),
    # Debian's busybox-static installs no applet links: nc is called through busybox. A
    # plain `nc -l` with stdin at EOF closes at once; a persistent server whose
    # handler reads everything is a sink.
    ("traffic-sink", "printf '#!/bin/sh\\nexec cat >/dev/null\\n' >/run/kpt-sink && chmod +x /run/kpt-sink && "
     "(busybox nc -ll -p " + str(SINK_PORT) + " -e /run/kpt-sink >/dev/null 2>&1 &) && echo listening", "listening", 5),
    ("xl-create", "xl create /etc/xen/kpt-domU.cfg 2>&1 && xl domid $DOMU", "^[0-9]+$", 90),
    ("xl-list", "xl list $DOMU", r"kpt-domU\s+[0-9]+", 20),
    ("vif-connected", "i=0; while [ $i -lt 90 ]; do s=$(xenstore-read /local/domain/0/backend/vif/$D/0/state 2>/dev/null); [ \"$s\" = 4 ] && echo connected && exit 0; sleep 1; i=$((i+1)); done; echo \"backend state: $s, frontend state: $(xenstore-read /local/domain/$D/device/vif/0/state 2>&1)\"; xl list; echo '--- domU console:'; tail -n 25 /var/log/xen/console/guest-$DOMU.log; exit 1", "connected", 100),
    ("vif-queue-threads", "ps -eo comm | grep \"^$VIF-q\" | sort; ls /sys/class/net/$VIF/queues", "guest-rx", 20),
    ("ping-domU", "i=0; while [ $i -lt 60 ]; do ping -c 1 -W 1 $DOMU_IP && exit 0; i=$((i+1)); done; exit 1", "1 received|1 packets received", 70),
]

# domU side (busybox), before the series' domU checks.
DOMU_CHECKS = [
    {"name": "netfront-up", "run": "ip link set eth0 up && ip addr add " + DOMU_IP + "/24 dev eth0 && cat /sys/class/net/eth0/address",
     "expect": "00:16:3e", "timeout": 20},
    {"name": "netfront-queues", "run": "ls /sys/class/net/eth0/queues", "expect": "tx-0", "timeout": 10},
    {"name": "ping-dom0", "run": "i=0; while [ $i -lt 30 ]; do ping -c 1 -W 1 " + DOM0_IP + " && exit 0; i=$((i+1)); done; exit 1",
     "expect": "1 packets received", "timeout": 40},
]


@dataclass
class NestedImages:
    dom0_initrd: Path
    domu_initrd: Path
    kernel: Path

    def paths(self) -> dict[str, Path]:
        return {"dom0-rootfs": self.dom0_initrd, "domU-initramfs": self.domu_initrd}


def _env(ws: Workspace) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ws.templates_dir)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["shquote"] = lambda s: shlex.quote(str(s))
    return env


def domu_settings(ws: Workspace, series: list[str]) -> dict:
    """A series may tune the domU: series.toml [domU] memory, vcpus, vif_options, extra_config."""
    out = {"memory": 256, "vcpus": 2, "vif_options": "", "extra_config": []}
    for name in series:
        path = ws.patches_dir / name / "series.toml"
        if path.exists():
            d = tomllib.loads(path.read_text()).get("domU") or {}
            for k in out:
                if k in d:
                    out[k] = d[k]
    return out


def render_domu_cfg(ws: Workspace, settings: dict) -> str:
    return _env(ws).get_template("domU.cfg.j2").render(
        name=DOMU, kernel="/boot/kpt/bzImage", ramdisk="/boot/kpt/domU.cpio.gz", extra="", mac="00:16:3e:00:00:02",
        **settings)


def render_dom0_init(ws: Workspace, smoke: list[dict]) -> str:
    dom0_checks = [{"name": n, "run": r, "expect": e, "timeout": t, "skip": ""} for n, r, e, t in DOM0_CHECKS]
    dom0_series = [image.normalise_smoke(s, series=s.get("series", "smoke")) for s in smoke if s.get("where") == "dom0"]
    names = sorted({s["series"] for s in dom0_series})
    return _env(ws).get_template("dom0-xl-init.sh.j2").render(
        domu_name=DOMU, domu_ip=DOMU_IP, dom0_ip=DOM0_IP, dom0_checks=dom0_checks, dom0_series=dom0_series,
        dom0_series_name="+".join(names) or "series", release_port=RELEASE_PORT, domu_timeout=DOMU_TIMEOUT)


def images(ws: Workspace, *, build, smoke: list[dict], progress=None) -> NestedImages:
    series = sorted({s.get("series") for s in smoke if s.get("series")})
    domu_smoke = [dict(c, series="domU-net", where="domU") for c in DOMU_CHECKS]
    domu_smoke += [s for s in smoke if s.get("where") == "domU"]
    domu = image.build_initramfs(ws, kernel_release=build.kernel_release, modules_dir=None, smoke=domu_smoke,
                                 mode="domU", hold_port=RELEASE_PORT)
    base = rootfs.base(ws, progress=progress)
    files = {
        "/sbin/kpt-dom0-init": render_dom0_init(ws, smoke).encode(),
        "/etc/xen/kpt-domU.cfg": render_domu_cfg(ws, domu_settings(ws, series)).encode(),
        "/boot/kpt/bzImage": build.bzimage,
        "/boot/kpt/domU.cpio.gz": domu,
    }
    dom0 = rootfs.pack(ws, base, modules_dir=build.modules_dir, files=files, executables=("/sbin/kpt-dom0-init",),
                       progress=progress)
    return NestedImages(dom0, domu, build.bzimage)


def boot(ws: Workspace, *, kernel: Path, initrd: Path, run_dir: Path, timeout: float, on_line=None,
         extra_qemu_args=(), xen: Path | None = None) -> bootmod.BootResult:
    return bootmod.boot(ws, mode="xen", kernel=kernel, initrd=initrd, run_dir=run_dir, timeout=timeout,
                        xen=xen, on_line=on_line, append="rdinit=/sbin/kpt-dom0-init",
                        extra_qemu_args=("-smp", "2", *extra_qemu_args), memory=MEMORY, dom0_mem=DOM0_MEM,
                        report_mode="xen+domU")
