"""results.json, JUnit XML and the results table (fast, no boot)."""

import io
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from kpatch_tool import ktap, results

KTAP = """\
KTAP version 1
1..3
    KTAP version 1
    # Subtest: base
    1..2
    # 6.1.192
    ok 1 kernel-release
    ok 2 modules-load # SKIP none
ok 1 base
    KTAP version 1
    # Subtest: netback-per-vif
    1..2
    # <xml> & "quotes"
    not ok 1 vif-count # exit status 1
    ok 2 other # TODO later
not ok 2 netback-per-vif
ok 3 lonely
"""


def _run(verdict="fail") -> results.RunResults:
    k = ktap.parse(KTAP)
    return results.RunResults(mode="guest", verdict=verdict, message="1 failed", duration=3.2,
                              console_log="/tmp/x/console.log", cases=results.cases_from_ktap(k, "guest"))


def test_classname_is_group_dot_mode_and_one_case_per_leaf():
    rr = _run()
    assert [(c.classname, c.name, c.status) for c in rr.cases] == [
        ("base.guest", "kernel-release", "pass"),
        ("base.guest", "modules-load", "skip"),
        ("netback-per-vif.guest", "vif-count", "fail"),
        ("netback-per-vif.guest", "other", "todo"),
        ("base.guest", "lonely", "pass"),
    ]
    assert rr.cases[2].output == '<xml> & "quotes"'


def test_junit_is_well_formed_and_counts_failures_and_skips(tmp_path):
    path = results.write_junit(tmp_path / "results.xml", _run())
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert root.get("tests") == "5" and root.get("failures") == "1"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"base.guest", "netback-per-vif.guest"}
    nb = suites["netback-per-vif.guest"]
    assert nb.get("failures") == "1" and nb.get("skipped") == "1"
    fail = nb.find("testcase[@name='vif-count']/failure")
    assert fail.get("message") == "exit status 1" and fail.text == '<xml> & "quotes"'
    assert nb.find("testcase[@name='other']/skipped") is not None
    # properties come first in a testsuite (JUnit schema order)
    assert list(nb)[0].tag == "properties"


def test_a_boot_without_results_is_a_failing_testcase(tmp_path):
    rr = results.RunResults(mode="xen", verdict="panic", message="Kernel panic - not syncing: x")
    root = ET.parse(results.write_junit(tmp_path / "r.xml", rr)).getroot()
    case = root.find("testsuite/testcase[@classname='boot.xen']")
    assert case is not None and "panic" in case.find("failure").get("message")
    assert root.get("errors") == "1"


def test_json_round_trip(tmp_path):
    rr = _run()
    results.write_json(tmp_path / "results.json", rr)
    back = results.load_json(tmp_path / "results.json")
    assert back == rr
    assert back.counts() == {"pass": 2, "fail": 1, "skip": 1, "todo": 1}
    assert results.find(tmp_path) == tmp_path / "results.json"


def test_table_lists_every_case_and_the_verdict():
    buf = io.StringIO()
    results.print_table(_run(), Console(file=buf, width=200))
    out = buf.getvalue()
    assert "vif-count" in out and "lonely" in out
    assert "verdict fail" in out and "1 failed" in out


def test_junit_is_well_formed_whatever_the_console_held(tmp_path):
    """ANSI colours, NUL, BEL and undecodable bytes (lone surrogates) come from consoles."""
    import xml.etree.ElementTree as ET

    nasty = "\x1b[31mred\x1b[0m \x00nul \x07bel \udcff lone \ufffe\x1b]0;title\x07 ok \u00e9"
    rr = results.RunResults(mode="guest", verdict="timeout", message=nasty, console_log=nasty, cases=[
        results.CaseResult("base.guest", "t" + nasty, "fail", nasty, nasty),
        results.CaseResult("base.guest", "s", "skip", nasty),
        results.CaseResult("base.guest", "p", "pass", "", nasty)])
    path = results.write_junit(tmp_path / "results.xml", rr)
    root = ET.parse(path).getroot()  # well-formed: parses
    text = path.read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x00" not in text and "\x07" not in text
    assert "red" in text and "ok \u00e9" in text and "title" not in text
    assert root.find(".//failure").get("message").startswith("red \ufffdnul")


@pytest.mark.parametrize("data, message", [
    ("[]", "not a results object"),
    ('{"mode": "guest"}', "'verdict' is missing"),
    ('{"mode": 5, "verdict": "pass"}', "'mode' must be str"),
    ('{"mode": "g", "verdict": "pass", "cases": {}}', "'cases' must be a list"),
    ('{"mode": "g", "verdict": "pass", "cases": [{"name": "x"}]}', "cases[0].'classname' is missing"),
    ('{"mode": "g", "verdict": "pass", "cases": [5]}', "cases[0] must be an object"),
    ('{"mode": "g", "verdict": "pass", "duration": "long"}', "'duration' must be float"),
])
def test_results_json_with_wrong_types_is_a_usage_error(tmp_path, data, message):
    from kpatch_tool.errors import UsageError

    p = tmp_path / "results.json"
    p.write_text(data)
    with pytest.raises(UsageError) as exc:
        results.load_json(p)
    assert message in exc.value.message and str(p) in exc.value.message


def test_a_checks_wall_time_is_its_seconds_and_junit_time(tmp_path):
    k = ktap.parse("KTAP version 1\n1..2\n# hi\n# kpt-time: 1.25s\nok 1 a\nok 2 b\n")
    cases = results.cases_from_ktap(k, "guest")
    assert [(c.name, c.seconds, c.output) for c in cases] == [("a", 1.25, "hi"), ("b", None, "")]
    rr = results.RunResults(mode="guest", verdict="pass", cases=cases)
    results.write_json(tmp_path / "r.json", rr)
    assert results.load_json(tmp_path / "r.json").cases == cases
    results.write_junit(tmp_path / "r.xml", rr)
    tcs = ET.parse(tmp_path / "r.xml").getroot().iter("testcase")
    assert [tc.get("time") for tc in tcs] == ["1.25", None]
