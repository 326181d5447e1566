"""kpt mail: threads as git format-patch makes them, cover letters, versions,
round trips through git am and b4, and refusals that send nothing.

Real git, the kernel's real checkpatch.pl / get_maintainer.pl (copied from the
Linux 6.1 checkout into a small kernel-shaped fixture repository), real b4."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mailfixtures as mf
from kpatch_tool import apply as applymod
from kpatch_tool import mail
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError
from kpatch_tool.series import load_series


@pytest.fixture
def env_out(tmp_path, monkeypatch):
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    # The user's git config (sendemail.*, identity) must not leak into tests.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("")


@pytest.fixture
def s1(tmp_path, linux_src, env_out):
    return mf.linux_series(tmp_path, linux_src)


def msg(path: Path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def subjects(tm) -> list[str]:
    return [" ".join(str(msg(f)["Subject"]).split()) for f in tm.files]


def test_mail_writes_one_shallow_thread_under_the_cover(s1):
    ws, repo, base = s1
    res = mail.prepare(ws, "s1")
    tm = res.trees["linux"]
    assert subjects(tm) == ["[PATCH 0/2] foo: make foo better", "[PATCH 1/2] foo: return the answer",
                            "[PATCH 2/2] bar: return two"]
    ids = [str(msg(f)["Message-Id"]) for f in tm.files]
    assert ids[0] == "<kpt.s1.v1.linux.0@kpt-tests.org>"
    assert ids[1] == "<kpt.s1.v1.linux.1@kpt-tests.org>"
    for f in tm.files[1:]:
        assert str(msg(f)["In-Reply-To"]) == ids[0]
        assert str(msg(f)["References"]) == ids[0]
    assert msg(tm.files[0])["In-Reply-To"] is None
    assert tm.out_dir == Path(ws.out_dir) / "mail" / "s1-v1" / "linux"
    assert tm.mbox.read_text().count("\nMessage-Id: ") == 2
    assert tm.thread_mbox.read_text().count("\nMessage-Id: ") == 3


def test_rerunning_mail_writes_the_same_bytes(s1):
    ws, _, _ = s1
    def mails():
        d = mail.prepare(ws, "s1").trees["linux"].out_dir
        return {f.name: f.read_bytes() for f in d.iterdir() if f.suffix in (".patch", ".mbox")}

    first = mails()
    assert len(first) == 5
    assert mails() == first


def test_cover_letter_has_body_shortlog_diffstat_and_base_commit(s1):
    ws, _, base = s1
    tm = mail.prepare(ws, "s1").trees["linux"]
    body = msg(tm.cover).get_content()
    assert "This series makes foo better, for the tests of s1." in body
    assert "Test Author (2):\n  foo: return the answer\n  bar: return two" in body
    assert "drivers/foo/foo.c | 2 +-" in body and "2 files changed" in body
    assert f"base-commit: {base}" in body
    assert "prerequisite-patch-id" not in body
    assert "*** SUBJECT HERE ***" not in tm.cover.read_text()


def test_mbox_applies_with_git_am_to_the_tree_kpt_apply_makes(s1, tmp_path):
    ws, repo, base = s1
    tm = mail.prepare(ws, "s1").trees["linux"]
    ar = applymod.apply_series(ws, "s1", tree="linux")
    clone = tmp_path / "am"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(clone)], check=True)
    mf.git(clone, "checkout", "-q", "--detach", base)
    mf.git(clone, "am", "-q", "--patch-format=mboxrd", str(tm.mbox))
    assert mf.git(clone, "rev-list", "--count", f"{base}..HEAD").strip() == "2"
    assert (mf.git(clone, "rev-parse", "HEAD^{tree}").strip()
            == mf.git(repo, "rev-parse", f"{ar.head_commit}^{{tree}}").strip())


def test_per_patch_changes_go_below_the_dashes_and_git_am_drops_them(s1, tmp_path):
    ws, repo, base = s1
    series = load_series(ws, "s1")
    p = series.trees["linux"].patches[0].path
    p.with_suffix(".changes").write_text("v2: return 42, not 41\n")
    tm = mail.prepare(ws, "s1").trees["linux"]
    text = tm.files[1].read_text()
    assert "---\nv2: return 42, not 41\n\n drivers/foo/foo.c" in text
    clone = tmp_path / "am"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(clone)], check=True)
    mf.git(clone, "checkout", "-q", "--detach", base)
    mf.git(clone, "am", "-q", "--patch-format=mboxrd", str(tm.mbox))
    assert "return 42, not 41" not in mf.git(clone, "log", "--format=%B", f"{base}..HEAD")


def test_depends_series_patches_are_prerequisites_not_mailed(s1, tmp_path):
    ws, repo, base = s1
    mf.git(repo, "checkout", "-q", "main")
    tip = mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 43"), "foo: return 43")
    mf.git(repo, "checkout", "-q", "--detach", base)
    mf.store_series(ws.root, "s2", "linux", repo, "main~1", tip, depends=["s1"],
                    cover="foo: follow up\n\nBuilds on s1.\n")
    # The stored base of s2 is the tree base; its dependency s1 goes under it.
    toml = ws.root / "patches/s2/series.toml"
    toml.write_text(toml.read_text().replace('base = "main~1"', f'base = "{base}"'))
    tm = mail.prepare(ws, "s2").trees["linux"]
    assert subjects(tm)[1:] == ["[PATCH 1/1] foo: return 43"]
    body = msg(tm.cover).get_content()
    assert f"base-commit: {base}" in body
    ids = [l.split(": ")[1] for l in body.splitlines() if l.startswith("prerequisite-patch-id:")]
    s1_ids = []
    for c in mf.git(repo, "rev-list", "--reverse", f"{base}..main~1").split():
        diff = mf.git(repo, "show", c)
        s1_ids.append(subprocess.run(["git", "patch-id", "--stable"], input=diff, capture_output=True,
                                     text=True, check=True).stdout.split()[0])
    assert ids == s1_ids


def test_qemu_thread_has_project_list_and_based_on_its_dependency(tmp_path, linux_src, env_out):
    # A kernel-shaped repo stands in for QEMU: what matters here is the kind.
    repo = mf.kernel_like_repo(tmp_path / "qemu", linux_src)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mid = mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 5"), "foo: five")
    tip = mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 6"), "bar: six")
    mf.git(repo, "checkout", "-q", "--detach", base)
    ws = mf.workspace(tmp_path / "ws", tmp_path / "cache", {"qemu": repo})
    mf.store_series(ws.root, "dep", "qemu", repo, base, mid)
    mf.store_series(ws.root, "top", "qemu", repo, base, tip, depends=["dep"],
                    cover="bar: six\n\nOn top of dep.\n")
    (ws.root / "patches/top/qemu/series").write_text("0002-bar-six.patch\n")
    for f in (ws.root / "patches/top/qemu").glob("0001-*"):
        f.unlink()
    tm = mail.prepare(ws, "top").trees["qemu"]
    assert "qemu-devel@nongnu.org" in tm.recipients.to
    cover = msg(tm.cover)
    assert "Based-on: <kpt.dep.v1.qemu.0@kpt-tests.org>" in cover.get_content()
    assert "qemu-devel@nongnu.org" in str(cover["To"])


def _s1_with_a_qemu_tree(tmp_path, linux_src):
    """Series s1 on linux plus one patch on a second tree, qemu."""
    ws, _, _ = mf.linux_series(tmp_path, linux_src)
    qrepo = mf.kernel_like_repo(tmp_path / "qemu", linux_src)
    qbase = mf.git(qrepo, "rev-parse", "HEAD").strip()
    qtip = mf.commit(qrepo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 9"), "bar: nine")
    mf.git(qrepo, "checkout", "-q", "--detach", qbase)
    (ws.root / "kpt.toml").write_text((ws.root / "kpt.toml").read_text() + f'\n[trees.qemu]\nsource = "{qrepo}"\n')
    from kpatch_tool import workspace as wsmod

    ws = wsmod.load(ws.root)
    mf.add_tree(ws.root / "patches/s1", "qemu", qrepo, qbase, qtip)
    return ws


def test_series_spanning_trees_names_the_companion_threads(tmp_path, linux_src, env_out):
    ws = _s1_with_a_qemu_tree(tmp_path, linux_src)
    res = mail.prepare(ws, "s1")
    assert set(res.trees) == {"linux", "qemu"}
    lbody = msg(res.trees["linux"].cover).get_content()
    qbody = msg(res.trees["qemu"].cover).get_content()
    assert "[PATCH 0/1] foo: make foo better" in lbody and "qemu-devel@nongnu.org" in lbody
    assert "https://lore.kernel.org/r/kpt.s1.v1.qemu.0@kpt-tests.org" in lbody
    assert "[PATCH 0/2] foo: make foo better" in qbody and "foo-list@vger.kernel.org" in qbody
    # One tree alone still names the other thread.
    only = mail.prepare(ws, "s1", tree="linux")
    assert set(only.trees) == {"linux"}
    body = msg(only.trees["linux"].cover).get_content()
    assert "[PATCH 0/1] foo: make foo better\n    to qemu-devel@nongnu.org" in body


def test_a_tree_without_patches_of_the_series_gets_no_thread(tmp_path, linux_src, env_out):
    """Like vring-dma-api, whose Linux side is upstream: the qemu thread goes out alone and
    does not name a linux thread; asking for the empty tree by name is an error."""
    ws = _s1_with_a_qemu_tree(tmp_path, linux_src)
    (ws.root / "patches/s1/linux/series").write_text("# nothing left on linux\n")
    res = mail.prepare(ws, "s1")
    assert set(res.trees) == {"qemu"}
    assert "[PATCH 0/" not in msg(res.trees["qemu"].cover).get_content().replace("[PATCH 0/2]", "")
    with pytest.raises(UsageError, match="nothing to mail for tree 'linux'"):
        mail.prepare(ws, "s1", tree="linux")


def test_reroll_tags_bumps_and_the_next_cover_has_range_diff_and_link(s1):
    ws, repo, base = s1
    v1 = mail.prepare(ws, "s1").trees["linux"]
    rr = mail.reroll(ws, "s1")
    assert (rr.sent, rr.next) == (1, 2)
    assert mf.git(repo, "rev-parse", "refs/tags/kpt/s1/v1^{commit}").strip() == v1.head_commit
    series = load_series(ws, "s1")
    assert series.version == 2 and "TODO" in series.changelog[2]
    # v2 changes a patch; the changelog says so.
    p = series.trees["linux"].patches[1].path
    p.write_text(p.read_text().replace("+\treturn 2;", "+\treturn 3;"))
    toml = series.toml_path
    toml.write_text(toml.read_text().replace("- TODO: what changed since v1", "- bar: return three"))
    tm = mail.prepare(ws, "s1").trees["linux"]
    assert subjects(tm)[0] == "[PATCH v2 0/2] foo: make foo better"
    assert tm.files[1].name.startswith("v2-0001-")
    body = msg(tm.cover).get_content()
    assert "Changes in v2:\n- bar: return three\n- Link to v1: https://lore.kernel.org/r/kpt.s1.v1.linux.0@kpt-tests.org" in body
    assert "Range-diff against v1:" in body
    rd = body.split("Range-diff against v1:")[1]
    assert "1:  " in rd and "= 1:" in rd and "2:  " in rd
    assert "-+\treturn 2;" in rd and "++\treturn 3;" in rd
    assert str(msg(tm.files[1])["Message-Id"]) == "<kpt.s1.v2.linux.1@kpt-tests.org>"


def test_v2_without_the_v1_tag_is_refused_naming_the_tag(s1):
    ws, _, _ = s1
    toml = ws.root / "patches/s1/series.toml"
    toml.write_text(toml.read_text().replace("version = 1", "version = 2"))
    with pytest.raises(UsageError, match=r"no tag kpt/s1/v1 in tree 'linux'"):
        mail.prepare(ws, "s1")
    assert mail.prepare(ws, "s1", range_diff_=False).trees["linux"].range_diff is None


def test_series_without_cover_text_is_refused(s1):
    ws, _, _ = s1
    (ws.root / "patches/s1/cover.md").unlink()
    with pytest.raises(UsageError, match="no cover letter text"):
        mail.prepare(ws, "s1")


def run_cli(ws, *args):
    return CliRunner().invoke(main, ["-w", str(ws.root), "mail", *args])


def test_send_without_smtp_config_refuses_with_exit_2(s1):
    ws, _, _ = s1
    r = run_cli(ws, "s1", "--send")
    assert r.exit_code == 2, r.output
    assert "sendemail.smtpServer" in r.output and "nothing sent" in r.output


def test_dry_run_shows_what_send_would_send(s1):
    ws, _, _ = s1
    r = run_cli(ws, "s1", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would send   linux 2   <kpt.s1.v1.linux.2@kpt-tests.org>  [PATCH 2/2] bar: return two" in r.output
    to = [l for l in r.output.splitlines() if l.strip().startswith("to: ")]
    assert len(to) == 3 and "foo@example.org" in to[1] and "linux-kernel@vger.kernel.org" in to[1]
    assert "dry run: 3 to send, 0 already sent; nothing sent" in r.output


def test_failed_gate_blocks_unless_forced(tmp_path, linux_src, env_out):
    repo = mf.kernel_like_repo(tmp_path / "linux", linux_src)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    tip = mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 1"),
                    "foo: return one", signoff=False)
    mf.git(repo, "checkout", "-q", "--detach", base)
    ws = mf.workspace(tmp_path / "ws", tmp_path / "cache", {"linux": repo})
    mf.store_series(ws.root, "nosob", "linux", repo, base, tip)
    r = run_cli(ws, "nosob", "--dry-run")
    assert r.exit_code == 2 and "gates failed (linux:checkpatch, linux:signoff)" in r.output, r.output
    assert "would send" not in r.output
    r = run_cli(ws, "nosob", "--dry-run", "--force")
    assert r.exit_code == 0 and "would send" in r.output, r.output


def test_b4_reads_the_mbox_as_one_series_with_version_and_count(s1, tmp_path):
    ws, repo, _ = s1
    mail.prepare(ws, "s1")
    mail.reroll(ws, "s1")
    tm = mail.prepare(ws, "s1").trees["linux"]
    b4 = Path(sys.executable).parent / "b4"
    for box in (tm.mbox, tm.thread_mbox):
        out = tmp_path / f"b4-{box.name}"
        res = subprocess.run([str(b4), "--no-stdin", "--offline-mode", "am", "-m", str(box), "-o", str(out)],
                             cwd=repo, capture_output=True, text=True, timeout=120)
        text = res.stdout + res.stderr
        assert res.returncode == 0, text
        assert "[PATCH v2 1/2] foo: return the answer" in text and "[PATCH v2 2/2] bar: return two" in text
        assert "Total patches: 2" in text
    assert "Cover: " in text and "Base: applies clean" in text  # the thread mbox has the cover
    assert len(list(out.glob("v2_*.mbx"))) == 1


def test_non_ascii_cover_is_encoded_and_still_reads_back(s1):
    ws, _, _ = s1
    (ws.root / "patches/s1/cover.md").write_text("foo: café support\n\nThanks to Philippe Mathieu-Daudé.\n")
    tm = mail.prepare(ws, "s1").trees["linux"]
    raw = tm.cover.read_bytes()
    head = raw.split(b"\n\n", 1)[0]
    assert head.isascii(), head  # RFC 2047 in the header
    m = msg(tm.cover)
    assert str(m["Subject"]) == "[PATCH 0/2] foo: café support"
    assert m.get_content_charset() == "utf-8"
    assert "Philippe Mathieu-Daudé" in m.get_content()


def test_mail_replaces_only_the_files_it_wrote(s1, tmp_path):
    """--out may be a folder of the user's: their *.patch and *.mbox files stay (issue 18)."""
    ws, _, _ = s1
    out = tmp_path / "my-patches"
    (out / "linux").mkdir(parents=True)
    mine = out / "linux" / "0001-my-own-work.patch"
    mine.write_text("mine\n")
    (out / "linux" / "archive.mbox").write_text("mine too\n")
    first = mail.prepare(ws, "s1", out=out).trees["linux"]
    again = mail.prepare(ws, "s1", out=out).trees["linux"]
    assert [f.name for f in again.files] == [f.name for f in first.files]
    assert mine.read_text() == "mine\n" and (out / "linux" / "archive.mbox").read_text() == "mine too\n"


def test_earlier_versions_come_from_one_tag_listing(make_repo):
    """version = 10**12 in series.toml ran one git rev-parse per earlier version."""
    repo = make_repo("tags")
    for tag in ("kpt/s1/v1", "kpt/s1/v3", "kpt/s1/vx", "kpt/s10/v2", "kpt/s1/v2/extra"):
        mf.git(repo, "tag", tag)
    assert mail.tagged_versions(repo / ".git", "s1") == [1, 3]
    assert mail.tagged_versions(repo / ".git", "none") == []


GOLDEN = Path(__file__).parent / "data" / "golden-s1.mbox"


def _golden_text(mbox: str) -> str:
    # The fixture's base holds scripts/ of the pinned Linux tree: its commit id, and so the
    # commit ids of the patches on it, follow the pin. Everything else must match exactly.
    mbox = re.sub(r"(?m)^base-commit: [0-9a-f]{40}$", "base-commit: <the fixture's base>", mbox)
    return re.sub(r"(?m)^From [0-9a-f]{40} Mon Sep 17", "From <commit> Mon Sep 17", mbox)


def test_mail_output_is_byte_for_byte_the_golden_mbox(tmp_path, linux_src, env_out, monkeypatch):
    """kpt mail is deterministic by design (fixed Message-Ids, no dates of its own): a fixture
    series with fixed commit dates gives exactly tests/data/golden-s1.mbox.
    KPT_UPDATE_GOLDEN=1 rewrites the file after an intended change."""
    for k in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.setenv(k, "2026-01-02T03:04:05+00:00")
    ws, _, _ = mf.linux_series(tmp_path, linux_src)
    got = _golden_text(mail.prepare(ws, "s1").trees["linux"].mbox.read_text())
    if os.environ.get("KPT_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def _placeholder_series(tmp_path, linux_src, monkeypatch):
    """s1 committed and signed by the project's team alias, as the shipped series are."""
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Kpatch Developers")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "kpt-dev@example.org")
    monkeypatch.setattr(mf, "AUTHOR", "Kpatch Developers <kpt-dev@example.org>")
    ws, repo, base = mf.linux_series(tmp_path, linux_src)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@kpt-tests.org")
    return ws, repo, base


def test_a_placeholder_identity_writes_a_marked_preview_and_exits_2_even_forced(
        tmp_path, linux_src, env_out, monkeypatch):
    ws, _, _ = _placeholder_series(tmp_path, linux_src, monkeypatch)
    res = mail.prepare(ws, "s1", force=True)
    assert res.unsendable and not res.to_dict()["sendable"]
    ident = next(g for g in res.trees["linux"].gates if g.name == "identity")
    assert ident.hard and any(e.startswith("0001-foo-return-the-answer.patch:") and "Signed-off-by: Kpatch "
                              "Developers <kpt-dev@example.org>" in e for e in ident.errors), ident.errors
    tm = res.trees["linux"]
    for f in tm.files:  # the preview is written, every mail marked
        assert msg(f)[mail.NOT_SENDABLE].startswith("a preview"), f
    assert tm.mbox.read_text().count(f"{mail.NOT_SENDABLE}: ") == 2
    for args in ([], ["--force"], ["--dry-run", "--force"]):
        r = run_cli(ws, "s1", *args)
        assert r.exit_code == 2, r.output
        assert "not sendable (linux:identity)" in r.output and "--force does not pass it" in r.output
        assert "would send" not in r.output


def test_send_refuses_a_placeholder_identity_and_a_marked_file(tmp_path, linux_src, env_out, monkeypatch):
    from kpatch_tool import mailsend

    ws, _, _ = _placeholder_series(tmp_path, linux_src, monkeypatch)
    res = mail.prepare(ws, "s1")
    with pytest.raises(UsageError, match="not sendable .*nothing sent"):
        mailsend.send(res, settings_for=lambda tm: mailsend.SmtpSettings(server="localhost"), force=True)
    # A result whose gates were dropped still cannot send the marked files.
    for tm in res.trees.values():
        tm.gates = []
    with pytest.raises(UsageError, match="marked X-Kpt-Not-Sendable"):
        mailsend.send(res, settings_for=lambda tm: mailsend.SmtpSettings(server="localhost"), dry_run=True)


def test_a_placeholder_sender_alone_makes_the_mails_a_preview(s1, monkeypatch):
    ws, _, _ = s1
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "me@box.localdomain")
    res = mail.prepare(ws, "s1")
    ident = next(g for g in res.trees["linux"].gates if g.name == "identity")
    assert res.unsendable and ident.errors == [
        "sender Test Author <me@box.localdomain> (git config user.email, the From of every mail): "
        "me@box.localdomain is on .localdomain, a name that reaches nobody outside this machine or test"]
