"""KTAP (Documentation/dev-tools/ktap.rst) from a console log into a tree of results.

The same parser reads the KTAP our guest /init prints and the KTAP KUnit prints
from inside the kernel (each line behind a printk timestamp, suites nested by
four spaces, `# Subtest:` headers). A console log is mostly not KTAP: kernel
messages, Xen's `(XEN)` lines and firmware noise are ignored; lines that look
like KTAP but are broken (a result without a number, a bad plan) are reported
in `errors`, never raised.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# `[    1.234567] ` printk time; Xen prefixes its own lines with `(XEN) ` and,
# with console_timestamps=boot, a `[    1.234] ` of its own.
_TS = re.compile(r"^\[\s*\d+\.\d+\] ?")
_XEN = re.compile(r"^\(XEN\) ")
_VERSION = re.compile(r"^K?TAP version (\d+)\s*$")
_PLAN = re.compile(r"^1\.\.(\d+)\s*(?:#.*)?$")
_BAD_PLAN = re.compile(r"^\d+\.\.\S*")
_RESULT = re.compile(r"^(not ok|ok)\b(.*)$")
_RESULT_BODY = re.compile(r"^\s+(\d+)\b\s*(?:-\s+)?(.*)$")
_SUBTEST = re.compile(r"^# Subtest: (.*)$")
_DIAG = re.compile(r"^#(?: ?)(.*)$")

PASS, FAIL, SKIP, TODO = "pass", "fail", "skip", "todo"


@dataclass
class KtapTest:
    number: int
    name: str
    status: str  # pass, fail, skip, todo
    reason: str = ""  # the text after `#` (SKIP/TODO reason, or why it failed)
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[KtapTest] = field(default_factory=list)
    plan: int | None = None  # the subtests' plan, when there are subtests
    line: int = 0  # 1-based line in the parsed text
    cut_off: bool = False  # stands in for a result line that never came

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def leaves(self, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], KtapTest]]:
        """(path, test) for every test without subtests, depth first."""
        path = prefix + (self.name,)
        if not self.subtests:
            return [(path, self)]
        out = []
        for t in self.subtests:
            out.extend(t.leaves(path))
        return out


@dataclass
class KtapDocument:
    version: int | None
    plan: int | None
    tests: list[KtapTest] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)  # lines after the last result
    from_kernel: bool = False  # printed by the kernel (printk timestamps), e.g. KUnit
    start_line: int = 0

    @property
    def complete(self) -> bool:
        return self.plan is not None and len([t for t in self.tests if not t.cut_off]) >= self.plan


@dataclass
class KtapResult:
    documents: list[KtapDocument] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # malformed lines and plan mismatches

    @property
    def tests(self) -> list[KtapTest]:
        return [t for d in self.documents for t in d.tests]

    @property
    def plan_seen(self) -> bool:
        return any(d.plan is not None for d in self.documents)

    @property
    def complete(self) -> bool:
        return bool(self.documents) and all(d.complete for d in self.documents)

    @property
    def failed(self) -> list[KtapTest]:
        """Failed leaves, and each top-level suite that failed with none of its
        leaves failing (a domU destroyed before its checks finished keeps the
        results it printed, all ok): either fails the run, as results.py counts it."""
        out = []
        for top in self.tests:
            leaves = [t for _, t in top.leaves() if t.failed]
            out.extend(leaves)
            if top.subtests and top.failed and not leaves:
                out.append(top)
        return out

    def leaves(self) -> list[tuple[tuple[str, ...], KtapTest]]:
        out = []
        for t in self.tests:
            out.extend(t.leaves())
        return out

    def counts(self) -> dict[str, int]:
        c = {PASS: 0, FAIL: 0, SKIP: 0, TODO: 0}
        for _, t in self.leaves():
            c[t.status] += 1
        return c

    def to_dict(self) -> dict:
        return asdict(self)


def strip_prefix(line: str) -> tuple[str, bool]:
    """The line without printk/Xen prefixes, and whether a printk timestamp was there."""
    line = line.rstrip("\r\n").replace("\r", "")
    if _XEN.match(line):
        return "", False  # the hypervisor's own messages never carry KTAP
    m = _TS.match(line)
    if m:
        return line[m.end():], True
    return line, False


def _indent(s: str) -> tuple[int, str]:
    body = s.lstrip(" \t")
    return len(s) - len(body), body.rstrip()


def _classify(body: str):
    """('version'|'plan'|'result'|'subtest'|'diag'|'bad'|None, match-data)."""
    if m := _VERSION.match(body):
        return "version", int(m.group(1))
    if m := _PLAN.match(body):
        return "plan", int(m.group(1))
    if _BAD_PLAN.match(body):
        return "bad", "malformed plan"
    if m := _RESULT.match(body):
        ok = m.group(1) == "ok"
        rest = m.group(2)
        b = _RESULT_BODY.match(rest)
        if not b or (rest and not rest[0].isspace()):
            return "bad", "result line without a test number"
        num, text = int(b.group(1)), b.group(2)
        name, _, directive = text.partition(" # ")
        if not _ and text.startswith("# "):
            name, directive = "", text[2:]
        name, directive = name.strip(), directive.strip()
        d_up = directive.upper()
        if d_up.startswith("SKIP"):
            status, reason = SKIP, directive[4:].strip()
        elif d_up.startswith("TODO"):
            status, reason = TODO, directive[4:].strip()
        else:
            status, reason = (PASS if ok else FAIL), directive
        return "result", (num, name or f"test{num}", status, reason)
    if m := _SUBTEST.match(body):
        return "subtest", m.group(1).strip()
    if m := _DIAG.match(body):
        return "diag", m.group(1)
    return None, None


@dataclass
class _Frame:
    indent: int
    plan: int | None = None
    name: str | None = None  # from `# Subtest:`
    tests: list[KtapTest] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # diagnostics waiting for a result


def _orphan(fr: _Frame, lineno: int, number: int) -> KtapTest:
    """A subtest whose result line never came (its runner was killed or timed out): a
    failure, with whatever results it printed kept below it."""
    done = len(fr.tests)
    planned = f" of {fr.plan}" if fr.plan is not None else ""
    return KtapTest(number, fr.name or "subtest", FAIL,
                    f"incomplete: {done}{planned} results, no result line", diagnostics=fr.pending,
                    subtests=fr.tests, plan=fr.plan, line=lineno, cut_off=True)


def _feed(res: KtapResult, fr: _Frame, closed: _Frame | None, kind: str, data, body: str, lineno: int) -> None:
    """One line into the innermost open (sub)test fr; closed is the subtest that just ended, if any."""
    if kind == "plan":
        if fr.plan is not None:
            res.errors.append(f"line {lineno}: second plan 1..{data} in one (sub)test")
        fr.plan = data
    elif kind == "subtest":
        fr.name = data
    elif kind == "diag":
        fr.pending.append(data)
    elif kind == "bad":
        res.errors.append(f"line {lineno}: {data}: {body[:80]}")
    elif kind == "result":
        num, name, status, reason = data
        expected = len(fr.tests) + 1
        if num != expected:
            res.errors.append(f"line {lineno}: test number {num}, expected {expected}")
        t = KtapTest(num, name, status, reason, diagnostics=fr.pending, line=lineno)
        fr.pending = []
        if closed is not None:
            t.subtests, t.plan = closed.tests, closed.plan
            t.diagnostics = closed.pending + t.diagnostics
            if closed.plan is not None and len(closed.tests) != closed.plan:
                res.errors.append(f"line {lineno}: {name}: plan 1..{closed.plan} but "
                                  f"{len(closed.tests)} results")
            if closed.name and closed.name != name:
                res.errors.append(f"line {lineno}: subtest '{closed.name}' closed by result '{name}'")
        fr.tests.append(t)
    if closed is not None and kind != "result":
        res.errors.append(f"line {lineno}: subtest {closed.name or '?'} has no result line")


def parse(text: str) -> KtapResult:
    """Parse every KTAP document found in text (a console log or plain KTAP)."""
    res = KtapResult()
    doc: KtapDocument | None = None
    stack: list[_Frame] = []

    def close_doc():
        nonlocal doc, stack
        if doc is None:
            return
        top = stack[0]
        doc.tests, doc.plan = top.tests, top.plan
        # Frames still open: subtests whose parent result line never came. Their
        # results are kept, under a failed test standing in for the missing line.
        for i in range(len(stack) - 1, 0, -1):
            fr = stack[i]
            res.errors.append(f"line {doc.start_line}: subtest {fr.name or '?'} has no result line")
            stack[i - 1].tests.append(_orphan(fr, doc.start_line, len(stack[i - 1].tests) + 1))
        doc.diagnostics = top.pending
        if doc.plan is not None and len(doc.tests) != doc.plan:
            res.errors.append(f"plan 1..{doc.plan} but {len(doc.tests)} results")
        res.documents.append(doc)
        doc, stack = None, []

    for lineno, raw in enumerate(text.splitlines(), 1):
        s, kernel = strip_prefix(raw)
        ind, body = _indent(s)
        kind, data = _classify(body)
        if kind is None:
            continue
        if doc is None:
            if kind not in ("version", "plan", "subtest", "result"):
                continue  # diagnostics/garbage before any KTAP
            doc = KtapDocument(version=data if kind == "version" else None, plan=None,
                               from_kernel=kernel, start_line=lineno)
            stack = [_Frame(indent=ind)]
            if kind == "version":
                continue
        base = stack[0].indent
        if ind < base:
            if kind == "version":
                close_doc()
                doc = KtapDocument(version=data, plan=None, from_kernel=kernel, start_line=lineno)
                stack = [_Frame(indent=ind)]
            continue  # less indented than the document: not ours
        if kind == "version" and ind == base:
            if stack[0].tests or stack[0].plan is not None or len(stack) > 1:
                close_doc()  # a second document (e.g. /init's after KUnit's)
                doc = KtapDocument(version=data, plan=None, from_kernel=kernel, start_line=lineno)
                stack = [_Frame(indent=ind)]
            continue
        # Deeper than the innermost frame: a subtest starts (with or without its version line).
        if ind > stack[-1].indent:
            stack.append(_Frame(indent=ind))
        # Shallower: inner frames end; a result line here closes the last one.
        closed: _Frame | None = None
        while len(stack) > 1 and ind < stack[-1].indent:
            fr = stack.pop()
            if closed is not None:
                res.errors.append(f"line {lineno}: subtest {closed.name or '?'} has no result line")
                fr.tests.append(_orphan(closed, lineno, len(fr.tests) + 1))
            closed = fr
        if kind != "version":
            _feed(res, stack[-1], closed, kind, data, body, lineno)
    close_doc()
    return res


class Progress:
    """Incremental view of a console: has the (non-kernel) KTAP plan been fulfilled?

    The runner feeds it every console line so it can stop a guest that does not
    power itself off (Xen's `noreboot`) soon after the last result. KUnit's own
    document (printed by the kernel, with timestamps) does not count: /init's
    checks come after it.
    """

    def __init__(self):
        self.plan: int | None = None
        self.results = 0
        self.seen_plan = False
        self._base: int | None = None
        self._kernel = False

    @property
    def done(self) -> bool:
        return self.plan is not None and self.results >= self.plan and not self._kernel

    def feed(self, line: str) -> bool:
        s, kernel = strip_prefix(line)
        ind, body = _indent(s)
        if _VERSION.match(body):
            if self._base is None or ind <= self._base:
                self._base, self._kernel = ind, kernel
                self.plan, self.results = None, 0
            return self.done
        if self._base is None or ind != self._base:
            return self.done
        if m := _PLAN.match(body):
            if self.plan is None:
                self.plan = int(m.group(1))
                self.seen_plan = True
        elif _RESULT.match(body) and _RESULT_BODY.match(_RESULT.match(body).group(2)):
            self.results += 1
        return self.done
