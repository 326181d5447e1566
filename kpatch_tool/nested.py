"""xen+domU mode: Xen in QEMU, our kernel as dom0 with Debian's toolstack, and a
PV domU (the same kernel) started by `xl create` with a vif on a bridge.

The outer QEMU gets 2 vCPUs, and dom0 and the domU 2 each, so multi-queue
netback and netfront are exercised. dom0's init (kpatch_tool/templates/dom0-xl-init.sh.j2)
prints one KTAP document: its own checks, the series' dom0 checks, and the
domU's document (read from the domU's console log) as a subtest, so one parser
and one results file cover all three places.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from kpatch_tool import boot as bootmod
from kpatch_tool import image, proc, rootfs, safefs, templating
from kpatch_tool.errors import KptError, PrereqError
from kpatch_tool.workspace import Workspace

DOMU = "kpt-domU"
DOM0_IP = "10.0.0.1"
DOMU_IP = "10.0.0.2"
RELEASE_PORT = 7777
SINK_PORT = 5001
MEMORY = 1536
DOM0_MEM = 768
DOMU_TIMEOUT = 120  # seconds dom0 waits at least for the domU to finish after releasing it
# Beyond its checks' timeouts, what the domU's init needs to finish: its base and
# after-checks (10 s each at most) and the power-off.
DOMU_FINISH = 60

# dom0 side, in order; $D (domain id) and $VIF exist after xl-create. Each command
# runs in Debian's /bin/sh; under TCG every exec of a dynamically linked program costs
# dom0 about 0.1 s, so the commands use shell builtins where they can.
DOM0_CHECKS = [
    # xenstored prints its pid (-P) once it serves its socket and dom0's ring, and only
    # then closes its output: no sleep and no polling until it answers.
    ("xenstored", "p=$(xenstored --pid-file /run/xen/xenstored.pid -P 2>/dev/null) && [ -n \"$p\" ] && echo up", "up", 30),
    ("xen-init-dom0", "xen-init-dom0 >/dev/null 2>&1 && xenstore-read /local/domain/0/name", "Domain-0", 30),
    ("xenconsoled", "xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console >/dev/null 2>&1 && echo started", "started", 30),
    ("netback-module", "modprobe xen-netback 2>&1 || true; ls -d /sys/bus/xen-backend/drivers/vif", "vif", 30),
    ("bridge", "ip link add name xenbr0 type bridge stp_state 0 forward_delay 0 && ip addr add $DOM0_IP/24 dev xenbr0 && ip link set xenbr0 up && ip -br addr show xenbr0", "UP|UNKNOWN", 20),
    # Debian's busybox-static installs no applet links: nc is called through busybox. A
    # plain `nc -l` with stdin at EOF closes at once; a persistent server whose
    # handler reads everything is a sink. (It starts beside the toolstack: 8 s at load 5,
    # and a timeout kills the sink with its check's process group.)
    ("traffic-sink", "printf '#!/bin/sh\\nexec cat >/dev/null\\n' >/run/kpt-sink && chmod +x /run/kpt-sink && "
     "(busybox nc -ll -p " + str(SINK_PORT) + " -e /run/kpt-sink >/dev/null 2>&1 &) && echo listening", "listening", 30),
    # xl's debug log is kept for the checks after it; only its warnings and errors are
    # shown. The domain's id goes to /run/kpt-domid for dom0's init ($D).
    ("xl-create", "xl -vvv create /etc/xen/kpt-domU.cfg >/var/log/xen/xl-create.log 2>&1; r=$?; "
     "grep -vE ': debug: |: detail: ' /var/log/xen/xl-create.log | tail -n 20; "
     "[ $r = 0 ] && xl domid $DOMU >/run/kpt-domid && read d </run/kpt-domid && echo $d", "^[0-9]+$", 90),
    ("xl-list", "xl list $DOMU", r"kpt-domU\s+[0-9]+", 20),
    ("vif-connected", "i=0; while [ $i -lt 300 ]; do s=$(xenstore-read /local/domain/0/backend/vif/$D/0/state 2>/dev/null); [ \"$s\" = 4 ] && echo connected && exit 0; sleep 0.3; i=$((i+1)); done; echo \"backend state: $s, frontend state: $(xenstore-read /local/domain/$D/device/vif/0/state 2>&1)\"; xl list; echo '--- domU console:'; tail -n 25 /var/log/xen/console/guest-$DOMU.log; exit 1", "connected", 100),
    # The vif's kthreads by name, from /proc with the shell's read (ps is an exec and
    # reads every process's files), then its queues.
    ("vif-queue-threads", "for f in /proc/[0-9]*/comm; do read c <$f && case $c in \"$VIF\"-q*) echo $c;; esac; done 2>/dev/null; "
     "for q in /sys/class/net/$VIF/queues/*; do echo ${q##*/}; done", "guest-rx", 20),
    ("ping-domU", "i=0; while [ $i -lt 60 ]; do ping -c 1 -W 1 $DOMU_IP && exit 0; i=$((i+1)); done; exit 1", "1 received|1 packets received", 70),
]
# Checks that need nothing before them (no xenstore, no domU): dom0's init starts them
# beside the toolstack's start and prints their results in their turn.
EARLY = ("netback-module", "bridge", "traffic-sink")

# domU side (busybox), before the series' domU checks. netfront's interface is
# found by its driver ("vif"): with other network devices (virtio-net over
# xenbus) it need not be eth0.
_NETFRONT = ("for n in /sys/class/net/*; do case \"$(readlink $n/device/driver)\" in */vif) NF=${n##*/};; esac; done; ")
DOMU_CHECKS = [
    {"name": "netfront-up",
     "run": _NETFRONT + "[ -n \"$NF\" ] || { ls /sys/class/net; exit 1; }; echo \"netfront: $NF\"; "
            "ip link set $NF up && ip addr add " + DOMU_IP + "/24 dev $NF && cat /sys/class/net/$NF/address",
     "expect": "00:16:3e", "timeout": 20},
    {"name": "netfront-queues", "run": _NETFRONT + "ls /sys/class/net/$NF/queues", "expect": "tx-0", "timeout": 10},
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


# The domU's vif is plugged into the bridge by this script (templates/vif-hotplug.sh.j2),
# not Debian's vif-bridge: see the template for why.
VIF_SCRIPT = "/etc/xen/scripts/kpt-vif"

# The series' own QEMU (a device model for the domU) lives here in dom0, with the
# libraries it needs that dom0's Debian root filesystem lacks.
DM_DIR = "/opt/kpt/qemu"
DM_WRAPPER = f"{DM_DIR}/bin/qemu-system-i386"
# glibc comes from dom0's own Debian: mixing the host's loader and libc with
# dom0's would be fragile, and both are bookworm.
_GLIBC = re.compile(r"^(ld-linux.*|libc|libm|libdl|libpthread|librt|libresolv|libutil)\.so")


def shared_libraries(binary: Path) -> dict[str, Path]:
    """The binary's shared library closure (soname -> host file), from ldd, the tool that owns it."""
    try:
        out = proc.run(["ldd", binary], timeout=60)
    except OSError as exc:
        raise PrereqError(f"cannot run ldd on {binary}: {exc}") from None
    if not out.ok:
        raise KptError(f"ldd {binary} failed: {out.stderr.strip() or out.stdout.strip()}")
    libs = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+) \(0x", line)
        if m:
            libs[m.group(1)] = Path(m.group(2))
        elif "=> not found" in line:
            raise PrereqError(f"{binary}: shared library {line.split()[0]} not found on this host")
    return libs


def device_model_files(binary: Path) -> dict[str, bytes | Path]:
    """A QEMU built on this host, runnable in dom0: the binary, its non-glibc libraries and
    a wrapper that points the loader at them (dom0 starts QEMU by this path)."""
    files: dict[str, bytes | Path] = {f"{DM_DIR}/bin/qemu-system-i386.bin": Path(binary)}
    for soname, path in sorted(shared_libraries(binary).items()):
        if not _GLIBC.match(soname):
            files[f"{DM_DIR}/lib/{soname}"] = path.resolve()
    files[DM_WRAPPER] = (f"#!/bin/sh\n# kpt: the series' QEMU with its own libraries\n{_DROP_VNC_NONE}"
                         f"LD_LIBRARY_PATH={DM_DIR}/lib exec {DM_DIR}/bin/qemu-system-i386.bin \"$@\"\n").encode()
    return files


# libxl (4.17) starts qemu-xen with "-vnc none" beside "-display none" when the domain has
# no VNC. kpt builds QEMU without VNC (--without-default-features), and since QEMU 8.2
# such a QEMU has no -vnc option at all: "-vnc: invalid option", no device model. "-vnc
# none" asks for nothing "-display none" does not already say, so the wrapper drops it;
# any other -vnc argument is passed on (and refused by a QEMU without VNC, as it should).
_DROP_VNC_NONE = """vnc=
for a do
	shift
	if [ -n "$vnc" ]; then
		vnc=
		[ "$a" = none ] && continue
		set -- "$@" -vnc
	fi
	[ "$a" = -vnc ] && vnc=1 && continue
	set -- "$@" "$a"
done
[ -n "$vnc" ] && set -- "$@" -vnc
"""


def _env(ws: Workspace) -> jinja2.Environment:
    return templating.env()


def domu_settings(ws: Workspace, series: list[str]) -> dict:
    """A series may tune the domU: series.toml [domU] memory, vcpus, vif_options, extra_config,
    extra (words added to the domU kernel's command line), device_model_args (the QEMU of
    the series, started for the domU, gets these),
    device_model_setup (dom0 shell commands run before it starts, e.g. making a disk image)
    and virtio (xl `virtio = [...]` specs: with a toolstack built from a Xen tree whose libxl
    knows them, libxl starts the device model and device_model_args are not used).
    A series later in the depends chain overrides an earlier one key by key."""
    out = {"memory": 256, "vcpus": 2, "vif_options": "", "extra_config": [], "extra": "",
           "device_model_args": [], "device_model_setup": "", "virtio": []}
    from kpatch_tool.series import load_series

    for name in series:
        out.update(load_series(ws, name).domu)  # validated there, key by key
    return out


# Added to the domU kernel's command line, before a series' [domU] extra. No BSD ptys:
# registering the 256 legacy pairs (CONFIG_LEGACY_PTYS, in the dom0 profile) took the
# domU's pty_init 22 s of its boot under TCG (initcall_debug, load 7); nothing here opens
# /dev/ptyXX (xenconsoled and everything else use /dev/ptmx).
DOMU_APPEND = "pty.legacy_count=0"


def render_domu_cfg(ws: Workspace, settings: dict, kernel: str = "/boot/kpt/bzImage",
                    libxl_virtio: bool = False) -> str:
    """libxl_virtio: the domU's virtio devices are xl's (`virtio = [...]`, started by libxl
    with the series' QEMU as the device model), not a QEMU dom0 starts by hand."""
    extra = " ".join(filter(None, [DOMU_APPEND, settings.get("extra", "")]))
    return _env(ws).get_template("domU.cfg.j2").render(
        **{**settings, "extra": extra, "virtio": settings.get("virtio", []) if libxl_virtio else []},
        name=DOMU, kernel=kernel, ramdisk="/boot/kpt/domU.cpio.gz", mac="00:16:3e:00:00:02",
        vif_script=VIF_SCRIPT, device_model=DM_WRAPPER)


# With a device model of the series' own, dom0 starts it for the paused domU
# the way libxl starts a PV device model (-xen-domid/-xen-attach, machine xenpv),
# in a session of its own so that nothing aimed at the check's process group
# reaches it,
# waits for it to report "running" in xenstore and only then unpauses the domU.
# By hand rather than through libxl: Xen 4.17's libxl starts a PV QEMU only for
# devices it knows (vfb, vkb, qdisk, 9pfs), and a domU's device model started
# by hand is how its own smoke scripts and developers run a new backend.
DM_LOG = "/var/log/xen/qemu-dm-$DOMU.log"


def dm_check(args: list[str], setup: str = "") -> tuple[str, str, str, int]:
    argv = [DM_WRAPPER, "-xen-domid", "$D", "-xen-attach", "-machine", "xenpv", "-display", "none",
            "-nodefaults", "-no-user-config", "-name", "$DOMU", *args]
    cmd = " ".join(a if a in ("$D", "$DOMU") else shlex.quote(a) for a in argv)
    run = ((f"{{ {setup.strip()}; }} || exit 1; " if setup.strip() else "") +
           f"(setsid {cmd} >{DM_LOG} 2>&1 &); i=0; "
           "while [ \"$(xenstore-read /local/domain/0/device-model/$D/state 2>/dev/null)\" != running ] "
           "&& [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; "
           f"ps -eo pid,args | grep '[x]en-domid' | cut -c1-300; tail -n 20 {DM_LOG}; "
           "[ \"$(xenstore-read /local/domain/0/device-model/$D/state 2>/dev/null)\" = running ] "
           "&& xl unpause $D && echo dm-running")
    return ("device-model", run, "dm-running", 70)


# dom0's PATH: Debian's toolstack (Xen's own folder first), or one built from a Xen tree.
DOM0_PATH = "/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOM0_PATH_TREE = "/usr/sbin:/usr/bin:/usr/lib/xen/bin:/sbin:/bin"


def xen_from_tree_check(xl_sha256: str, build_id: str) -> tuple[str, str, str, int]:
    """dom0 runs the hypervisor and the toolstack built from the Xen tree, not Debian's:
    the running hypervisor's build id (xl info) is our build's, and so is xl."""
    run = ("echo \"build_id=$(xl info | sed -n 's/^build_id *: //p') "
           "xl=$(sha256sum \"$(command -v xl)\" | cut -c1-16)\"")
    return ("xen-from-tree", run, f"^build_id={build_id} xl={xl_sha256[:16]}$", 20)


def libxl_dm_checks(setup: str = "") -> tuple[list[tuple[str, str, str, int]], tuple[str, str, str, int]]:
    """With xl's virtio devices: the setup before `xl create`, and afterwards the check that
    the device model libxl started for the domU runs (named as the hand-started one's, so
    checks that need the device model find it)."""
    before = [("device-model-setup", f"{{ {setup.strip()}; }} && echo setup-done", "setup-done", 60)] \
        if setup.strip() else []
    run = ("s=$(xenstore-read /local/domain/0/device-model/$D/state 2>/dev/null); "
           "ps -eo pid,args | grep '[x]en-domid' | cut -c1-300; "
           "tail -n 20 /var/log/xen/qemu-dm-$DOMU.log 2>/dev/null; "
           "[ \"$s\" = running ] && pgrep -f \"xen-domid $D \" >/dev/null && echo dm-running")
    return before, ("device-model", run, "dm-running", 30)


def libxl_lifecycle_checks() -> list[dict]:
    """Once the domU is gone (xl's virtio devices): its device model went with it (no device
    model and no virtio backend directory left, whatever domain ids the checks made), a second
    `xl create` (paused: the devices' backends come up without a guest) brings the backend
    up again and `xl destroy` leaves no device model and no backend directory behind; and
    the hypervisor's log has no error."""
    # Any domain's: an xl save/restore in the checks gave the domU another id.
    gone = ("i=0; while pgrep -f '[x]en-domid' >/dev/null && [ $i -lt 10 ]; do sleep 1; i=$((i+1)); done; "
            "if pgrep -af '[x]en-domid'; then echo 'device model left behind'; exit 1; fi; "
            "if xenstore-ls /local/domain/0/backend/virtio 2>/dev/null | grep .; then exit 1; fi; echo dm-gone")
    again = ("xl create -p /etc/xen/kpt-domU.cfg >/var/log/xen/xl-recreate.log 2>&1 || "
             "{ tail -n 20 /var/log/xen/xl-recreate.log; exit 1; }; D2=$(xl domid $DOMU); i=0; "
             "while [ \"$(xenstore-read /local/domain/0/backend/virtio/$D2/0/state 2>/dev/null)\" != 2 ] "
             "&& [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; "
             "echo \"recreated: backend-state=$(xenstore-read /local/domain/0/backend/virtio/$D2/0/state 2>&1)\"; "
             "xl destroy $DOMU; i=0; while pgrep -f \"xen-domid $D2 \" >/dev/null && [ $i -lt 10 ]; do "
             "sleep 1; i=$((i+1)); done; pgrep -af \"xen-domid $D2 \" && exit 1; "
             "xenstore-ls /local/domain/0/backend/virtio/$D2 2>/dev/null && exit 1; echo destroyed-clean")
    # What Xen prints for its own failures (BUG(), ASSERT(), WARN(), a fatal trap, a panic).
    xl_dmesg = ("if xl dmesg | grep -E '\\(XEN\\).*(Xen BUG at|Assertion .* failed|Xen WARN at|FATAL|Panic on CPU)'; "
                "then exit 1; fi; "
                "echo clean")
    return [{"name": "device-model-gone", "run": gone, "expect": "^dm-gone$", "timeout": 20, "skip": ""},
            {"name": "xl-recreate-destroy", "run": again, "expect": "backend-state=2", "timeout": 90,
             "skip": ""},
            {"name": "xl-dmesg-clean", "run": xl_dmesg, "expect": "^clean$", "timeout": 10, "skip": ""}]


def domu_wait(smoke: list[dict]) -> int:
    """Seconds dom0 waits for the domU once its own checks are done.

    When dom0 releases the domU, the domU may not have started its slowest check yet
    (dom0's checks need not wait for it), so dom0 gives it every check's timeout: the sum
    over the domU's checks (the built-in network ones and the series' domU checks, a
    skipped one costs nothing), and DOMU_FINISH for the rest of its init; never less than
    DOMU_TIMEOUT. dom0 stops waiting as soon as the domU is gone, so a passing run does
    not pay for it."""
    domu = [image.normalise_smoke(c, series="domU-net") for c in DOMU_CHECKS]
    domu += [image.normalise_smoke(s, series=s.get("series", "smoke")) for s in smoke if s.get("where") == "domU"]
    return max(DOMU_TIMEOUT, sum(c["timeout"] for c in domu if not c["skip"]) + DOMU_FINISH)


def render_dom0_init(ws: Workspace, smoke: list[dict], *, device_model_args: list[str] | None = None,
                     device_model_setup: str = "", xl_sha256: str | None = None, xen_build_id: str = "",
                     libxl_virtio: bool = False, long_checks: bool = False) -> str:
    """device_model_args: the domU gets a device model started with these (the domU is created paused).
    xl_sha256, xen_build_id: the toolstack and hypervisor come from the Xen tree; a check says
    dom0 runs them.
    libxl_virtio: libxl starts the device model (xl's virtio devices): checked, not started.
    long_checks: the checks' environment has KPT_LONG_CHECKS=1 (their long form)."""
    checks = list(DOM0_CHECKS)
    if xl_sha256:
        checks.insert([c[0] for c in checks].index("xenconsoled") + 1, xen_from_tree_check(xl_sha256, xen_build_id))
    if libxl_virtio:
        i = [c[0] for c in checks].index("xl-create")
        before, verify = libxl_dm_checks(device_model_setup)
        checks[i + 2:i + 2] = [verify]
        checks[i:i] = before
    elif device_model_args is not None:
        i = [c[0] for c in checks].index("xl-create")
        name, run, expect, timeout = checks[i]
        checks[i] = (name, run.replace("xl -vvv create ", "xl -vvv create -p "), expect, timeout)
        checks.insert(i + 2, dm_check(device_model_args, device_model_setup))
    dom0_checks = [{"name": n, "run": r, "expect": e, "timeout": t, "skip": "", "early": n in EARLY} for n, r, e, t in checks]
    for i, c in enumerate([c for c in dom0_checks if c["early"]], start=1):
        c["early_index"] = i
    dom0_series = [image.normalise_smoke(s, series=s.get("series", "smoke")) for s in smoke if s.get("where") == "dom0"]
    names = sorted({s["series"] for s in dom0_series})
    return _env(ws).get_template("dom0-xl-init.sh.j2").render(
        dom0_path=DOM0_PATH_TREE if xl_sha256 else DOM0_PATH,
        libxl_virtio=libxl_virtio,
        domu_name=DOMU, domu_ip=DOMU_IP, dom0_ip=DOM0_IP, dom0_checks=dom0_checks, dom0_series=dom0_series,
        dom0_series_name="+".join(names) or "series", release_port=RELEASE_PORT, domu_timeout=domu_wait(smoke),
        after_name=image.AFTER_CHECKS,
        after_checks=[image.dmesg_clean_check(), *(libxl_lifecycle_checks() if libxl_virtio else [])],
        long_checks=long_checks)


def domu_kernel(ws: Workspace, build) -> tuple[str, Path]:
    """The domU's kernel as (path in dom0, host file): the build's vmlinux, stripped, where it has one.

    xl loads a bzImage by decompressing its payload in dom0's userspace (liblzma for the
    xz a tinyconfig-based kernel carries), under TCG: seconds of the xl-create phase.
    An ELF vmlinux is only copied; stripped it is 16 MiB, which the plain cpio costs little.
    A build without vmlinux (a stand-in in tests) gives its bzImage."""
    build_dir = getattr(build, "build_dir", None)
    vmlinux = Path(build_dir) / "vmlinux" if build_dir else None
    if vmlinux is None or not vmlinux.is_file():
        return "/boot/kpt/bzImage", Path(build.bzimage)
    digest = rootfs._hash_inputs([vmlinux])
    out = ws.cache_dir / "images" / f"domU-vmlinux-{digest}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + f".part{os.getpid()}")
        res = proc.run(["objcopy", "--strip-all", vmlinux, part], timeout=300)
        if not res.ok:
            raise KptError(f"objcopy --strip-all {vmlinux} failed: {res.stderr.strip()[-300:]}")
        os.replace(part, out)
    return "/boot/kpt/vmlinux", out


def images(ws: Workspace, *, build, smoke: list[dict], progress=None,
           device_model: Path | None = None, series: list[str], long_checks: bool = False,
           xen_tools: Path | None = None, xen_build_id: str = "") -> NestedImages:
    """device_model: a qemu-system-i386 (the series' own, from `kpt build qemu`) that dom0
    starts for the domU with the series' [domU] device_model_args.
    xen_tools: the install of `kpt build xen`'s tools (build_xen.build_tools), laid over
    dom0's Debian toolstack; xen_build_id: the hypervisor's GNU build id (it boots with them).
    series: the depends chain, deepest first, whose [domU] settings apply in that order
    (a series without checks of its own counts too)."""
    domu_smoke = [dict(c, series="domU-net", where="domU") for c in DOMU_CHECKS]
    domu_smoke += [s for s in smoke if s.get("where") == "domU"]
    domu = image.build_initramfs(ws, kernel_release=build.kernel_release, modules_dir=None, smoke=domu_smoke,
                                 mode="domU", hold_port=RELEASE_PORT, long_checks=long_checks)
    base = rootfs.base(ws, progress=progress)
    settings = domu_settings(ws, series)
    dm_args = settings["device_model_args"] if device_model else None
    # A toolstack from a Xen tree with the series' libxl: xl creates the virtio devices.
    libxl_virtio = bool(xen_tools and settings["virtio"])
    if libxl_virtio and not device_model:
        raise KptError("[domU] virtio needs the series' own QEMU as the device model (a series of the "
                       "depends chain with QEMU patches)")
    kernel_path, kernel_file = domu_kernel(ws, build)
    files: dict[str, bytes | Path] = {
        "/sbin/kpt-dom0-init": render_dom0_init(ws, smoke, device_model_args=dm_args,
                                                device_model_setup=settings["device_model_setup"],
                                                xl_sha256=_xl_sha256(xen_tools), xen_build_id=xen_build_id,
                                                libxl_virtio=libxl_virtio, long_checks=long_checks).encode(),
        "/etc/xen/kpt-domU.cfg": render_domu_cfg(ws, settings, kernel_path, libxl_virtio).encode(),
        VIF_SCRIPT: _env(ws).get_template("vif-hotplug.sh.j2").render().encode() + b"\n",
        kernel_path: kernel_file,
        "/boot/kpt/domU.cpio.gz": domu,
    }
    if device_model:
        files.update(device_model_files(device_model))
    dom0 = rootfs.pack(ws, base, modules_dir=build.modules_dir, files=files,
                       overlays=[xen_tools] if xen_tools else [],
                       executables=("/sbin/kpt-dom0-init", VIF_SCRIPT, DM_WRAPPER, f"{DM_DIR}/bin/qemu-system-i386.bin"),
                       progress=progress)
    return NestedImages(dom0, domu, build.bzimage)


def _xl_sha256(xen_tools: Path | None) -> str | None:
    if not xen_tools:
        return None
    xl = Path(xen_tools) / "usr/sbin/xl"
    if not xl.is_file():
        raise KptError(f"{xen_tools}: no usr/sbin/xl in the Xen tools' install")
    return safefs.sha256_file(xl)


def boot(ws: Workspace, *, kernel: Path, initrd: Path, run_dir: Path, timeout: float, on_line=None,
         extra_qemu_args=(), xen: Path | None = None) -> bootmod.BootResult:
    return bootmod.boot(ws, mode="xen", kernel=kernel, initrd=initrd, run_dir=run_dir, timeout=timeout,
                        xen=xen, on_line=on_line, append="rdinit=/sbin/kpt-dom0-init",
                        extra_qemu_args=("-smp", "2", *extra_qemu_args), memory=MEMORY, dom0_mem=DOM0_MEM,
                        report_mode="xen+domU")
