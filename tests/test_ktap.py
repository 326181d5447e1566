"""The KTAP parser on our /init's output, KUnit's in-kernel output, and broken input (all fast)."""

from kpatch_tool import ktap

OUR_INIT = """\
[    1.143696] Run /init as init process
KTAP version 1
1..2
    KTAP version 1
    # Subtest: base
    1..3
    # 6.1.192
    ok 1 kernel-release
    ok 2 modules-load # SKIP no modules in the image
    # clean
    ok 3 dmesg-clean
ok 1 base
    KTAP version 1
    # Subtest: s1
    1..2
    # no
    not ok 1 bad # exit status 3
Killed
    ok 2 later # TODO not ready
not ok 2 s1
# kpt-init: done at uptime 2.50s
[    2.556812] reboot: Power down
"""

# KUnit as the kernel prints it (Linux 6.1 test_data, with printk timestamps and
# kernel noise in between; tab indentation and "ok N - name").
KUNIT = """\
[    0.060000] printk: console [mc-1] enabled
[    0.060000] TAP version 14
[    0.060000] 1..2
[    0.060000] \t# Subtest: kunit-resource-test
[    0.060000] \t1..3
[    0.060000] \tok 1 - kunit_resource_test_init_resources
[    0.060000] kAFS: Red Hat AFS client v0.1 registering.
[    0.060000] \tok 2 - kunit_resource_test_alloc_resource
[    0.060000] \tok 3 - kunit_resource_test_destroy_resource # SKIP no resources
[    0.060000] ok 1 - kunit-resource-test
[    0.060000] \t# Subtest: example
[    0.060000] \t1..2
[    0.060000] \t# example_simple_test: EXPECTATION FAILED at lib/kunit/example-test.c:30
[    0.060000] \tExpected 1 + 1 == 3, but
[    0.060000] \t# example_simple_test: example_simple_test failed
[    0.060000] \tnot ok 1 - example_simple_test
[    0.060000] \tok 2 - example_mock_test
[    0.060000] not ok 2 - example
"""

NESTED3 = """\
KTAP version 1
1..1
    KTAP version 1
    # Subtest: outer
    1..1
        KTAP version 1
        # Subtest: inner
        1..2
        ok 1 a
        not ok 2 b
    not ok 1 inner
not ok 1 outer
"""


def test_parses_our_init_output_into_groups_with_status_reasons_and_diagnostics():
    r = ktap.parse(OUR_INIT)
    assert r.errors == []
    assert r.complete and r.plan_seen
    (doc,) = r.documents
    assert not doc.from_kernel
    base, s1 = doc.tests
    assert (base.name, base.status, base.plan) == ("base", "pass", 3)
    assert [(t.name, t.status) for t in base.subtests] == [
        ("kernel-release", "pass"), ("modules-load", "skip"), ("dmesg-clean", "pass")]
    assert base.subtests[0].diagnostics == ["6.1.192"]
    assert base.subtests[1].reason == "no modules in the image"
    assert s1.status == "fail"
    bad, later = s1.subtests
    assert (bad.status, bad.reason, bad.diagnostics) == ("fail", "exit status 3", ["no"])
    assert (later.status, later.reason) == ("todo", "not ready")
    assert doc.diagnostics == ["kpt-init: done at uptime 2.50s"]
    assert [t.name for t in r.failed] == ["bad"]
    assert r.counts() == {"pass": 2, "fail": 1, "skip": 1, "todo": 1}


def test_parses_kunit_in_kernel_output_with_timestamps_tabs_and_noise():
    r = ktap.parse(KUNIT)
    assert r.errors == []
    (doc,) = r.documents
    assert doc.from_kernel and doc.version == 14 and doc.plan == 2
    res, ex = doc.tests
    assert (res.name, res.status) == ("kunit-resource-test", "pass")
    assert [t.status for t in res.subtests] == ["pass", "pass", "skip"]
    assert res.subtests[2].reason == "no resources"
    assert ex.status == "fail"
    assert ex.subtests[0].name == "example_simple_test"
    assert "EXPECTATION FAILED" in ex.subtests[0].diagnostics[0]


def test_kernel_kunit_document_and_init_document_are_both_kept():
    r = ktap.parse(KUNIT + OUR_INIT)
    assert len(r.documents) == 2
    assert [d.from_kernel for d in r.documents] == [True, False]
    assert [t.name for t in r.tests] == ["kunit-resource-test", "example", "base", "s1"]


def test_three_levels_of_nesting():
    r = ktap.parse(NESTED3)
    assert r.errors == []
    outer = r.tests[0]
    inner = outer.subtests[0]
    assert [t.name for t in inner.subtests] == ["a", "b"]
    assert [p for p, _ in r.leaves()] == [("outer", "inner", "a"), ("outer", "inner", "b")]


def test_kunit_two_space_indent_without_subtest_header():
    text = "KTAP version 1\n1..1\n  KTAP version 1\n  1..3\n  ok 1 case_1\n  ok 2 case_2\n  ok 3 case_3\nok 1 suite\n"
    r = ktap.parse(text)
    assert r.errors == [] and r.complete
    assert [t.name for t in r.tests[0].subtests] == ["case_1", "case_2", "case_3"]


def test_malformed_lines_are_reported_not_raised():
    text = "KTAP version 1\n1..3\nok 1 fine\nok banana\n1..x\nnot ok 3 skipped-number\n"
    r = ktap.parse(text)
    assert any("without a test number" in e for e in r.errors)
    assert any("malformed plan" in e for e in r.errors)
    assert any("test number 3, expected 2" in e for e in r.errors)
    assert any("plan 1..3 but 2 results" in e for e in r.errors)
    assert not r.complete


def test_interrupted_output_is_incomplete():
    r = ktap.parse("KTAP version 1\n1..3\nok 1 a\n[  1.0] Kernel panic - not syncing: oops\n")
    assert r.plan_seen and not r.complete
    assert r.documents[0].plan == 3 and len(r.tests) == 1


def test_no_ktap_in_a_plain_console():
    r = ktap.parse("[    0.1] Linux version 6.1\nok, whatever\nRun /init as init process\n")
    assert not r.plan_seen and r.documents == [] and not r.complete


def test_xen_lines_are_never_ktap():
    r = ktap.parse("(XEN) ok 1 not-a-test\n(XEN) 1..5\n")
    assert r.documents == []


def test_progress_is_done_after_the_last_top_level_result_of_a_userspace_document():
    p = ktap.Progress()
    for line in KUNIT.splitlines():
        assert not p.feed(line), "a kernel (KUnit) document must not end the boot"
    lines = OUR_INIT.splitlines()
    done_at = [i for i, line in enumerate(lines) if p.feed(line)]
    assert lines[done_at[0]] == "not ok 2 s1"
    assert p.seen_plan


def test_a_subtest_cut_off_by_its_parent_keeps_its_results_and_fails():
    """Seen in a nested boot: the domU was destroyed mid-check, so its series subtest never got
    its result line and dom0's `ok 3 domU` closed two levels at once."""
    text = "\n".join([
        "KTAP version 1", "1..1",
        "    # Subtest: domU", "    KTAP version 1", "    1..2",
        "        # Subtest: base", "        1..1", "        ok 1 kernel-release", "    ok 1 base",
        "        # Subtest: virtio-xenbus", "        1..3",
        "        not ok 1 frontend-connected", "        ok 2 virtio-status-features",
        "ok 1 domU"])
    k = ktap.parse(text)
    paths = {"/".join(p): t.status for p, t in k.leaves()}
    assert paths["domU/virtio-xenbus/frontend-connected"] == "fail"
    assert paths["domU/virtio-xenbus/virtio-status-features"] == "pass"
    cut = k.tests[0].subtests[1]
    assert cut.name == "virtio-xenbus" and cut.status == "fail" and "incomplete: 2 of 3" in cut.reason
    assert any("virtio-xenbus has no result line" in e for e in k.errors)


def test_an_open_subtest_at_the_end_of_the_log_is_kept_as_a_failure():
    k = ktap.parse("KTAP version 1\n1..1\n    # Subtest: s\n    1..2\n    ok 1 a\n")
    assert [("/".join(p), t.status) for p, t in k.leaves()] == [("s/a", "pass")]
    assert k.tests[0].status == "fail" and not k.complete
