"""Gates before mail: the kernel's real checkpatch.pl, Signed-off-by, Fixes:
tags and subjects, on patches formatted from a kernel-shaped fixture repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import mailfixtures as mf
from kpatch_tool import gates
from kpatch_tool.series import Backport


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
    assert [r.status for r in res.values()] == ["pass"] * 5 + ["skip"], res
    assert res["fixes"].note == "no Fixes: tags"
    assert res["backport"].note == "no declared backports"


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
    assert "no Signed-off-by from the author <author@kpt-tests.org>" in r.errors[1]
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


PLACEHOLDER = "Kpatch Developers <kpt-dev@example.org>"
UPSTREAM = "21a235bce12361e64adfc2ef97e4ae2e51ad63d4"


def _commit_as(repo: Path, author: str, subject: str, body: str, n: int) -> None:
    (repo / "lib/bar.c").write_text(mf.BAR_C.replace("return 1", f"return {n}"))
    mf.git(repo, "commit", "-q", "-a", f"--author={author}", "-m", f"{subject}\n\n{body}\n")


def test_identity_gate_names_the_patch_and_line_of_every_placeholder(tmp_path):
    repo = mf.kernel_like_repo(tmp_path / "linux", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    _commit_as(repo, PLACEHOLDER, "bar: two", f"Two.\n\nSigned-off-by: {PLACEHOLDER}", 2)
    _commit_as(repo, mf.AUTHOR, "bar: three", f"Three.\n\nCo-developed-by: Team <team@lab.invalid>\n"
               f"Signed-off-by: Team <team@lab.invalid>\nSigned-off-by: {mf.AUTHOR}", 3)
    files = fmt(repo, f"{base}..HEAD", tmp_path / "p")
    r = gates.gate_identity(gates.read_mails(files))
    assert r.status == "fail" and r.hard and r.unsendable and "kpt series signoff" in r.note
    lines = files[0].read_text().splitlines()
    sob_at = lines.index(f"Signed-off-by: {PLACEHOLDER}") + 1
    from_at = next(i for i, l in enumerate(lines, 1) if l.startswith("From: "))
    assert r.errors[0].startswith(f"0001-bar-two.patch:{from_at}: From: {PLACEHOLDER}: ")
    assert r.errors[1].startswith(f"0001-bar-two.patch:{sob_at}: Signed-off-by: {PLACEHOLDER}: ")
    three = files[1].read_text().splitlines()
    assert r.errors[2].startswith(f"0002-bar-three.patch:{three.index('Co-developed-by: Team <team@lab.invalid>') + 1}: "
                                  "Co-developed-by: Team <team@lab.invalid>: team@lab.invalid is on .invalid")
    assert len(r.errors) == 4, r.errors


def test_identity_gate_checks_the_sender_and_passes_real_addresses(krepo, tmp_path):
    repo, base = krepo
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: two")
    mails = gates.read_mails(fmt(repo, f"{base}..HEAD", tmp_path / "p"))
    assert gates.gate_identity(mails, mf.AUTHOR).status == "pass"
    r = gates.gate_identity(mails, "Me <me@box.localdomain>")
    assert r.status == "fail" and r.errors[0].startswith("sender Me <me@box.localdomain>")


def _backport_repo(tmp_path, body: str, author: str = "Petr Pavlu <petr.pavlu@suse.com>"):
    repo = mf.kernel_like_repo(tmp_path / "linux", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    _commit_as(repo, author, "xen/virtio: Fix NULL deref when a bridge of PCI root bus has no parent", body, 2)
    files = fmt(repo, f"{base}..HEAD", tmp_path / "p")
    bp = Backport("linux", "0001.patch", UPSTREAM, "xen/virtio: Fix NULL deref when a bridge of PCI root bus has no parent",
                  "Petr Pavlu <petr.pavlu@suse.com>", 7)
    return gates.read_mails(files), {files[0].name: bp}


STABLE_BODY = (f"commit {UPSTREAM} upstream.\n\nThe message.\n\n"
               "Signed-off-by: Petr Pavlu <petr.pavlu@suse.com>\nSigned-off-by: Juergen Gross <jgross@suse.com>\n"
               f"Signed-off-by: {mf.AUTHOR}")


def test_a_declared_backport_in_the_stable_form_to_the_stable_list_passes(tmp_path):
    mails, bps = _backport_repo(tmp_path, STABLE_BODY)
    r = gates.gate_backport(mails, bps, "linux", sender=mf.AUTHOR, subject_prefix="PATCH 6.1.y",
                            to=["stable@vger.kernel.org"])
    assert r.status == "pass", r.errors
    alt = STABLE_BODY.replace(f"commit {UPSTREAM} upstream.", f"[ Upstream commit {UPSTREAM} ]")
    mails, bps = _backport_repo(tmp_path / "alt", alt)
    assert gates.gate_backport(mails, bps, "linux", sender=mf.AUTHOR, subject_prefix="PATCH 6.1",
                               to=["Stable <stable@vger.kernel.org>"]).status == "pass"


def test_a_backport_without_the_upstream_line_or_its_author_or_the_stable_list_fails(tmp_path):
    body = STABLE_BODY.replace(f"commit {UPSTREAM} upstream.\n\n", "")
    mails, bps = _backport_repo(tmp_path, body, author=PLACEHOLDER)
    r = gates.gate_backport(mails, bps, "linux", sender="Someone Else <else@kpt-tests.org>",
                            subject_prefix="PATCH", to=["debian-kernel@lists.debian.org"])
    errs = "\n".join(r.errors)
    assert r.status == "fail"
    assert f"starts its message with 'commit {UPSTREAM} upstream.'" in errs
    assert "keeps the upstream author Petr Pavlu <petr.pavlu@suse.com>" in errs
    assert "not the sender's else@kpt-tests.org" in errs
    assert "goes To: stable@vger.kernel.org" in errs and "names no stable branch" in errs


def test_a_backport_naming_another_commit_points_at_the_declaration(tmp_path):
    other = "0" * 40
    mails, bps = _backport_repo(tmp_path, STABLE_BODY.replace(UPSTREAM, other, 1))
    r = gates.gate_backport(mails, bps, "linux", subject_prefix="PATCH 6.1.y", to=["stable@vger.kernel.org"])
    assert len(r.errors) == 1 and f"names upstream commit {other}, series.toml (line 7) declares {UPSTREAM}" in r.errors[0]


def test_a_qemu_backport_carries_the_cherry_pick_line(tmp_path):
    mails, bps = _backport_repo(tmp_path, STABLE_BODY.replace(f"commit {UPSTREAM} upstream.\n\n", "")
                                + f"\n(cherry picked from commit {UPSTREAM})")
    assert gates.gate_backport(mails, bps, "qemu").status == "pass"
    mails, bps = _backport_repo(tmp_path / "no", STABLE_BODY)
    r = gates.gate_backport(mails, bps, "qemu")
    assert r.status == "fail" and "cherry picked from commit" in r.errors[0]


def test_a_placeholder_added_to_maintainers_is_a_warning_naming_the_line(tmp_path):
    repo = mf.kernel_like_repo(tmp_path / "linux", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    (repo / "MAINTAINERS").write_text(mf.MAINTAINERS + f"\nBAZ DRIVER\nM:\t{PLACEHOLDER}\nR:\t{mf.AUTHOR}\n")
    mf.git(repo, "commit", "-q", "-a", "-m", f"MAINTAINERS: add baz\n\nBaz.\n\nSigned-off-by: {mf.AUTHOR}\n")
    files = fmt(repo, f"{base}..HEAD", tmp_path / "p")
    r = gates.gate_identity(gates.read_mails(files))
    at = files[0].read_text().splitlines().index(f"+M:\t{PLACEHOLDER}") + 1
    assert r.status == "warn" and r.warnings == [
        f"0001-MAINTAINERS-add-baz.patch:{at}: MAINTAINERS M: {PLACEHOLDER}: kpt-dev@example.org is on "
        "example.org, a domain reserved for examples (RFC 2606); name a person there"]
