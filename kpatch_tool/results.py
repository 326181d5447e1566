"""Run results on disk: results.json (ours) and results.xml (JUnit, for CI), and a table.

One JUnit testcase per leaf test. A top-level KTAP test with subtests is a
group (a series, `base`, or a KUnit suite): its leaves get the classname
`<group>.<mode>`; top-level tests without subtests get `base.<mode>`.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpatch_tool.errors import UsageError
from kpatch_tool.ktap import FAIL, PASS, SKIP, TODO, KtapResult

RESULTS_JSON = "results.json"
RESULTS_XML = "results.xml"


@dataclass
class CaseResult:
    classname: str  # <series or base>.<mode>
    name: str  # the test (path below its group, dot-joined)
    status: str  # pass, fail, skip, todo
    reason: str = ""
    output: str = ""  # the KTAP diagnostics: the check's output
    seconds: float | None = None  # the check's wall time in the guest (its `# kpt-time:` line)


# The check helper (templates/ktap-check.sh.j2) prints a check's wall time as its last
# diagnostic; it is the case's `seconds`, not part of its output.
_TIME = re.compile(r"^kpt-time: (\d+(?:\.\d+)?)s$")


def _case(classname: str, name: str, status: str, reason: str, diagnostics: list[str]) -> CaseResult:
    seconds = None
    if diagnostics and (m := _TIME.match(diagnostics[-1].strip())):
        seconds, diagnostics = float(m.group(1)), diagnostics[:-1]
    return CaseResult(classname, name, status, reason, "\n".join(diagnostics), seconds)


@dataclass
class RunResults:
    mode: str
    verdict: str  # pass, fail, panic, oops, timeout, no-ktap
    message: str = ""
    duration: float = 0.0
    console_log: str = ""
    cases: list[CaseResult] = field(default_factory=list)
    ktap_errors: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    phases: list[dict] = field(default_factory=list)  # boot phases (kpatch_tool/phases.py), in order

    def counts(self) -> dict[str, int]:
        c = {PASS: 0, FAIL: 0, SKIP: 0, TODO: 0}
        for case in self.cases:
            c[case.status] = c.get(case.status, 0) + 1
        return c


def cases_from_ktap(k: KtapResult, mode: str) -> list[CaseResult]:
    out = []
    for top in k.tests:
        if top.subtests:
            group = top.name
            for path, t in top.leaves():
                out.append(_case(f"{group}.{mode}", ".".join(path[1:]), t.status, t.reason, t.diagnostics))
            # A group that failed with every leaf passing (e.g. a crashed suite) still fails.
            if top.failed and not any(t.failed for _, t in top.leaves()):
                out.append(CaseResult(f"{group}.{mode}", "(suite)", FAIL, top.reason or "suite failed",
                                      "\n".join(top.diagnostics)))
        else:
            out.append(_case(f"base.{mode}", top.name, top.status, top.reason, top.diagnostics))
    return out


def write_json(path: Path, results: RunResults) -> Path:
    path = Path(path)
    data = asdict(results)
    data["counts"] = results.counts()
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load_json(path: Path) -> RunResults:
    path = Path(path)
    try:
        from kpatch_tool.userfile import read_text

        data = json.loads(read_text(path, "results file"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read results ({exc})") from None
    return _from_dict(path, data)


def _typed(path: Path, where: str, data: dict, spec: dict, required=()) -> dict:
    out = {}
    for key in required:
        if key not in data:
            raise UsageError(f"{path}: {where}'{key}' is missing")
    for key, want in spec.items():
        if key not in data:
            continue
        v = data[key]
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or isinstance(v, bool) and want is not bool:
            raise UsageError(f"{path}: {where}'{key}' must be {want.__name__}, not {type(v).__name__}")
        out[key] = v
    return out


def _from_dict(path: Path, data) -> RunResults:
    """results.json as written by write_json; anything else is named, not a traceback."""
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a results object")
    top = _typed(path, "", data, {"mode": str, "verdict": str, "message": str, "duration": float,
                                  "console_log": str, "ktap_errors": list, "extra": dict},
                 required=("mode", "verdict"))
    raw_cases = data.get("cases", [])
    if not isinstance(raw_cases, list):
        raise UsageError(f"{path}: 'cases' must be a list")
    cases = []
    for i, c in enumerate(raw_cases):
        if not isinstance(c, dict):
            raise UsageError(f"{path}: cases[{i}] must be an object")
        spec: dict = {k: str for k in ("classname", "name", "status", "reason", "output")}
        if c.get("seconds", 0) is not None:  # null: a case without a time
            spec["seconds"] = float
        cases.append(CaseResult(**_typed(path, f"cases[{i}].", c, spec, required=("classname", "name", "status"))))
    top["ktap_errors"] = [str(x) for x in top.get("ktap_errors", [])]
    if "phases" in data:
        from kpatch_tool import phases

        try:
            top["phases"] = phases.check_list(data["phases"], str(path))
        except TypeError as exc:
            raise UsageError(str(exc)) from None
    return RunResults(cases=cases, **top)


def write_junit(path: Path, results: RunResults) -> Path:
    """JUnit XML: one <testsuite> per classname, one <testcase> per test."""
    path = Path(path)
    suites: dict[str, list[CaseResult]] = {}
    for c in results.cases:
        suites.setdefault(c.classname, []).append(c)
    root = ET.Element("testsuites", name=f"kpt boot {results.mode}", tests=str(len(results.cases)),
                      failures=str(sum(c.status == FAIL for c in results.cases)),
                      time=f"{results.duration:.3f}")
    # A boot that never produced results (panic, timeout) is itself a failing testcase,
    # or CI would show a green empty run.
    if results.verdict not in ("pass", "fail"):
        suites.setdefault(f"boot.{results.mode}", []).insert(
            0, CaseResult(f"boot.{results.mode}", "boot", FAIL, f"{results.verdict}: {results.message}"))
        root.set("tests", str(len(results.cases) + 1))
        root.set("errors", "1")
    for name, cases in suites.items():
        s = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                          failures=str(sum(c.status == FAIL for c in cases)),
                          skipped=str(sum(c.status in (SKIP, TODO) for c in cases)))
        # JUnit's schema has properties only on a testsuite, first.
        props = ET.SubElement(s, "properties")
        ET.SubElement(props, "property", name="verdict", value=results.verdict)
        if results.console_log:
            ET.SubElement(props, "property", name="console_log", value=results.console_log)
        for c in cases:
            tc = ET.SubElement(s, "testcase", classname=c.classname, name=c.name)
            if c.seconds is not None:
                tc.set("time", f"{c.seconds:.2f}")
            if c.status == FAIL:
                f = ET.SubElement(tc, "failure", message=c.reason or "not ok")
                f.text = c.output or None
            elif c.status in (SKIP, TODO):
                ET.SubElement(tc, "skipped", message=(f"TODO {c.reason}" if c.status == TODO else c.reason))
            if c.output and c.status != FAIL:
                out = ET.SubElement(tc, "system-out")
                out.text = c.output
    for el in root.iter():
        el.attrib = {k: xml_safe(v) for k, v in el.attrib.items()}
        if el.text:
            el.text = xml_safe(el.text)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return path


ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# What XML 1.0 cannot hold at all, escaped or not: most C0 controls, lone
# surrogates (undecodable console bytes), U+FFFE and U+FFFF.
NOT_XML_RE = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """Console text as JUnit can carry it: colours dropped, the unrepresentable marked."""
    return NOT_XML_RE.sub("\ufffd", ANSI_RE.sub("", str(text)))


def find(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    for cand in (run_dir / RESULTS_JSON, run_dir / "boot" / RESULTS_JSON, run_dir):
        if cand.is_file():
            return cand
    raise UsageError(f"{run_dir}: no {RESULTS_JSON} (run `kpt boot --out {run_dir}` first)")


def print_table(results: RunResults, console) -> None:
    from rich.table import Table
    from rich.text import Text

    style = {PASS: "green", FAIL: "red", SKIP: "yellow", TODO: "yellow"}
    if results.cases:
        table = Table("class", "test", "result", "seconds", "reason")
        for c in results.cases:
            st = style.get(c.status, "")
            secs = "" if c.seconds is None else f"{c.seconds:.2f}"
            table.add_row(Text(c.classname), Text(c.name), Text(c.status, style=st), Text(secs), Text(c.reason))
        console.print(table)
    if results.phases:
        console.print(Text("phases: " + ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in results.phases)))
    n = results.counts()
    vstyle = "green" if results.verdict == "pass" else "red"
    console.print(Text.assemble("verdict ", (results.verdict, vstyle),
                                f"{': ' + results.message if results.message else ''} - "
                                f"{n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped, {n[TODO]} todo "
                                f"in {results.duration:.1f}s; console: {results.console_log}"))
