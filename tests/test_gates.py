"""Gates before mail: the kernel's real checkpatch.pl, Signed-off-by, Fixes:
tags and subjects, on patches formatted from a kernel-shaped fixture repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import mailfixtures as mf
from kpatch_tool import gates


@pytest.fixture
def krepo(tmp_path, linux_src):
    repo = mf.kernel_like_repo(tmp_path / "linux", linux_src)
    return repo, mf.git(repo, "rev-parse", "HEAD").strip()


def fmt(repo: Path, rng: str, out: Path) -> list[Path]:
    files = subprocess.run(["git", "-C", str(repo), "format-patch", "-o", str(out), rng],
                           check=True, capture_output=True, text=True).stdout.split()
    return [Path(f) for f in files]


def by_name(results):
    return {r.name: r for r in results}


def test_clean_series_passes_every_gate(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 7"), "foo: return seven")
    res = by_name(gates.run_gates(None, None, repo, base, "linux"))
    assert [r.status for r in res.values()] == ["pass"] * 4, res
    assert res["fixes"].note == "no Fixes: tags"


def test_checkpatch_errors_fail_and_warnings_are_listed(krepo, tmp_path):
    repo, base = krepo
    bad = mf.FOO_C.replace("\treturn 0;", "\treturn 0 ; \n")  # trailing whitespace (ERROR), space before ; (WARNING)
    mf.commit(repo, "drivers/foo/foo.c", bad, "foo: add whitespace")
    r = gates.gate_checkpatch(repo, fmt(repo, f"{base}..HEAD", tmp_path / "p"), "linux")
    assert r.status == "fail"
    assert any("ERROR: trailing whitespace" in e and "drivers/foo/foo.c:" in e for e in r.errors), r.errors
    assert any("space prohibited before semicolon" in w for w in r.warnings), r.warnings


def test_checkpatch_warnings_alone_do_not_block(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("\treturn 0;", "\treturn 0 ;"), "foo: odd spacing")
    r = gates.gate_checkpatch(repo, fmt(repo, f"{base}..HEAD", tmp_path / "p"), "linux")
    assert r.status == "warn" and r.ok and r.warnings and not r.errors


def test_checkpatch_reports_missing_signoff_even_when_otherwise_clean(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 8"), "foo: return eight",
              signoff=False)
    r = gates.gate_checkpatch(repo, fmt(repo, f"{base}..HEAD", tmp_path / "p"), "linux")
    assert r.status == "fail" and any("Missing Signed-off-by" in e for e in r.errors), r


def test_tree_without_checkpatch_skips_the_gate_with_a_note(tmp_path):
    repo = mf.kernel_like_repo(tmp_path / "xen", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: two")
    res = by_name(gates.run_gates(None, None, repo, base, "xen"))
    assert res["checkpatch"].status == "skip" and "no scripts/checkpatch.pl" in res["checkpatch"].note
    assert res["signoff"].status == "pass"


def test_signoff_missing_or_not_from_the_author_fails(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: two", signoff=False)
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 3"), "bar: three", signoff=False,
              body="Someone else signed.\n\nSigned-off-by: Other Person <other@example.org>")
    r = gates.gate_signoff(gates.read_mails(fmt(repo, f"{base}..HEAD", tmp_path / "p")))
    assert r.status == "fail" and len(r.errors) == 2
    assert "0001-bar-two.patch: no Signed-off-by" in r.errors[0]
    assert "no Signed-off-by from the author <author@example.org>" in r.errors[1]
    assert "other@example.org" in r.errors[1]


def test_fixes_tags_are_checked_against_the_history(krepo, tmp_path):
    repo, first = krepo
    target = mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 4"), "bar: return four")
    mf.git(repo, "branch", "side")
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.git(repo, "checkout", "-q", "side")
    other = mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 5"), "bar: on a side branch")
    mf.git(repo, "checkout", "-q", "main")
    good = f'Fixes: {target[:12]} ("bar: return four")'
    cases = {
        "good": good,
        "short": f'Fixes: {target[:8]} ("bar: return four")',
        "unknown": 'Fixes: 0123456789ab ("bar: return four")',
        "wrongsubj": f'Fixes: {target[:12]} ("bar: return five")',
        "nosubj": f"Fixes: {target[:12]}",
        "notancestor": f'Fixes: {other[:12]} ("bar: on a side branch")',
    }
    for i, (name, line) in enumerate(cases.items()):
        mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", f"return {10 + i}"),
                  f"foo: fix {name}", body=f"Fix it.\n\n{line}")
    files = fmt(repo, f"{base}..HEAD", tmp_path / "p")
    r = gates.gate_fixes(gates.read_mails(files), repo, base)
    assert r.status == "fail"
    errs = "\n".join(r.errors)
    assert "fix-good" not in errs
    assert "fix-short" in errs and "at least 12 hex digits" in errs
    assert "fix-unknown" in errs and "no such commit" in errs
    assert "fix-wrongsubj" in errs and "does not match the commit's (\"bar: return four\")" in errs
    assert "fix-nosubj" in errs and "write the subject as" in errs
    assert "fix-notancestor" in errs and "not in the history under the series" in errs
    assert len(r.errors) == 5


def test_subject_length_and_prefix_per_project(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "no prefix in this subject")
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 3"), "bar: " + "x" * 72)
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 4"), "media: uvcvideo: fine")
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 5"), 'Revert "bar: return four"')
    mails = gates.read_mails(fmt(repo, f"{base}..HEAD", tmp_path / "p"))
    r = gates.gate_subject(mails, "linux")
    assert r.status == "fail"
    assert len(r.errors) == 2, r.errors
    assert "no 'subsystem: ' prefix" in r.errors[0]
    assert "summary is 77 characters, linux wants at most 75" in r.errors[1]
    # Xen allows 80 characters.
    assert len(gates.gate_subject(mails[1:2], "xen").errors) == 0


def test_fixes_on_a_snapshot_base_is_a_warning_not_a_failure(tmp_path):
    """A tarball import has a single parentless commit: a Fixes: id cannot be looked up there."""
    repo = mf.kernel_like_repo(tmp_path / "snap", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 1"), "foo: fix it",
              body='Fix it.\n\nFixes: ef8ae384b4c9 ("xen/virtio: Handle PCI devices which Host controller is described in DT")')
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: fix it",
              body="Fix it.\n\nFixes: ef8ae384b4c9")
    files = fmt(repo, f"{base}..HEAD", tmp_path / "p")
    r = gates.gate_fixes(gates.read_mails(files), repo, base)
    assert any("snapshot without history" in w for w in r.warnings)
    assert len(r.errors) == 1 and "bar-fix-it" in r.errors[0] and "write the subject" in r.errors[0]
