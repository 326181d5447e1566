"""The boot stage: a kernel and an initramfs under QEMU (guest) or Xen-in-QEMU (dom0) → BootResult.

The verdict comes from the console: a panic marker, a timeout, a missing or
incomplete KTAP document, an oops, a failed check, or a pass. boot() always
returns a BootResult and writes results.json and results.xml into the run
folder; `BootResult.raise_for_verdict()` turns a bad verdict into the error
(and exit code) the CLI reports: SmokeFailed (1) for a failed check,
BootError (6) for everything that kept the checks from running.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import ktap, phases, qemu, results
from kpatch_tool.errors import BootError, SmokeFailed, UsageError
from kpatch_tool.workspace import Workspace

MODES = ("guest", "xen")
VERDICTS = ("pass", "fail", "oops", "panic", "timeout", "no-ktap")
CONSOLE_LOG = "console.log"


@dataclass
class BootResult:
    verdict: str  # one of VERDICTS
    mode: str
    message: str
    console_log: Path
    duration: float
    ktap: ktap.KtapResult
    results: list[results.CaseResult]
    run_dir: Path
    argv: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # the last 30 console lines
    outcome: qemu.RunOutcome | None = None
    phases: list[dict] = field(default_factory=list)  # phases.Phase as dicts, in the order they ended

    @property
    def ok(self) -> bool:
        return self.verdict == "pass"

    def raise_for_verdict(self) -> None:
        if self.verdict == "pass":
            return
        detail = "\n".join(["--- last console lines ---", *self.tail, f"--- full log: {self.console_log}"])
        if self.verdict == "fail":
            failed = [f"{c.classname}:{c.name}" for c in self.results if c.status == "fail"]
            raise SmokeFailed(f"{len(failed)} check(s) failed in {self.mode} boot: {', '.join(failed)}",
                              detail="\n".join(self._failure_detail()) + f"\nresults: {self.run_dir / results.RESULTS_JSON}")
        raise BootError(f"{self.mode} boot: {self.verdict}: {self.message}", detail=detail)

    def _failure_detail(self) -> list[str]:
        out = []
        for c in self.results:
            if c.status == "fail":
                out.append(f"not ok {c.classname}:{c.name} # {c.reason}")
                out.extend(f"  {line}" for line in c.output.splitlines()[-10:])
        return out


def _verdict(out: qemu.RunOutcome, k: ktap.KtapResult, timeout: float, where: str = "") -> tuple[str, str]:
    last = next((line.strip() for line in reversed(out.tail) if line.strip() and not line.startswith("# exit")), "")
    if out.panic:
        # The panic is often only the end of it (init killed by an oops): name the cause.
        cause = f" (after: {'; '.join(out.oopses[:2])})" if out.oopses else ""
        return "panic", f"{out.panic}{cause} ({where.replace('stopped', 'panicked')})" if where else out.panic + cause
    if out.timed_out and not out.ktap_done:
        if out.plan_seen:
            got = sum(len(d.tests) for d in k.documents if not d.from_kernel)
            plan = sum(d.plan or 0 for d in k.documents if not d.from_kernel)
            return "timeout", f"no verdict after {timeout:.0f}s ({got} of {plan} KTAP results; {where})"
        return "timeout", f"no KTAP plan after {timeout:.0f}s ({where}; last line: {last[:120]})"
    if not k.plan_seen:
        return "no-ktap", (f"QEMU exited {out.returncode} and no KTAP plan was seen ({where}; "
                           f"last line: {last[:160]})")
    if not k.complete:
        missing = [f"{d.plan - len(d.tests)} of {d.plan}" for d in k.documents if d.plan and not d.complete]
        return "no-ktap", (f"KTAP incomplete: {', '.join(missing) or 'no plan'} results missing "
                           f"(QEMU exited {out.returncode}; {where})")
    if out.oopses:
        return "oops", out.oopses[0]
    failed = k.failed
    if failed:
        return "fail", f"{len(failed)} failed: " + ", ".join(t.name for t in failed[:5])
    return "pass", f"{len(k.leaves())} tests"


def boot(ws: Workspace, *, mode: str, kernel: Path, initrd: Path, run_dir: Path, timeout: float,
         xen: Path | None = None, extra_qemu_args: Sequence[str] = (), on_line: Callable[[str], object] | None = None,
         append: str = "", memory: int | None = None, dom0_mem: int | None = None,
         report_mode: str | None = None) -> BootResult:
    """Boot kernel with initrd in mode (guest: plain QEMU; xen: as PV dom0 under Xen) and judge the console."""
    if mode not in MODES:
        raise UsageError(f"boot mode '{mode}': one of {', '.join(MODES)}")
    if timeout <= 0:
        raise UsageError(f"--timeout {timeout}: must be positive")
    kernel, initrd = qemu.check_bzimage(Path(kernel)), Path(initrd)
    if not initrd.is_file():
        raise UsageError(f"{initrd}: no such initramfs")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = qemu.new_marker()
    if mode == "guest":
        mem = memory or qemu.GUEST_MEMORY
        qemu.check_fits(initrd, mem, "the guest")
        argv = qemu.guest_argv(kernel, initrd, marker=marker, append=append, memory=mem, extra=extra_qemu_args)
    else:
        xen_elf = qemu.xen_binary(ws, xen)
        mem = memory or qemu.XEN_MEMORY
        dom0 = dom0_mem or min(qemu.DOM0_MEM, mem // 2)
        qemu.check_fits(initrd, dom0, "dom0")
        argv = qemu.xen_argv(xen_elf, kernel, initrd, marker=marker, append=append, memory=mem, dom0_mem=dom0,
                             extra=extra_qemu_args)
    log = run_dir / CONSOLE_LOG
    log.write_text("")  # one boot per log: a rerun into the same folder starts afresh
    lines: list[str] = []
    # xen+domU boots in xen mode; its results (and phases) are named for what ran.
    shown = report_mode or mode
    tracker = phases.Tracker(shown)
    start = time.monotonic()

    def collect(line: str):
        lines.append(line)
        tracker.feed(line, time.monotonic() - start)
        if on_line:
            on_line(line)

    out = qemu.run(argv, log=log, timeout=timeout, marker=marker, on_line=collect)
    duration = time.monotonic() - start
    where = tracker.where()
    tracker.finish(duration)
    k = ktap.parse("\n".join(lines))
    verdict, message = _verdict(out, k, timeout, where)
    cases = results.cases_from_ktap(k, shown)
    res = BootResult(verdict, shown, message, log, duration, k, cases, run_dir, argv, out.tail, out,
                     tracker.to_list())
    rr = results.RunResults(mode=shown, verdict=verdict, message=message, duration=round(duration, 3),
                            console_log=str(log), cases=cases, ktap_errors=k.errors, phases=res.phases,
                            extra={"qemu": shlex.join(argv), "accel": "kvm" if "kvm" in argv else "tcg",
                                   "ktap_done_after": out.done_after, "qemu_returncode": out.returncode,
                                   "stopped_by_runner": out.stopped, "oopses": out.oopses[:20],
                                   "kernel": str(kernel), "initrd": str(initrd)})
    results.write_json(run_dir / results.RESULTS_JSON, rr)
    results.write_junit(run_dir / results.RESULTS_XML, rr)
    return res
