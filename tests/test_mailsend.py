"""kpt mail --send through a real SMTP server (aiosmtpd on localhost): every
mail once with the headers kpt wrote, a half-sent series finished by a rerun
and never a mail twice, --resend, --reflect, STARTTLS and AUTH with a
self-signed certificate, settings from the tree's git config or kpt.toml.

The fixture tree has no kernel scripts (checkpatch is skipped, recipients come
from series.toml), so these tests need no Linux tree and run in seconds."""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner

import mailfixtures as mf
from kpatch_tool import apply as applymod
from kpatch_tool import mailsend
from kpatch_tool.cli import main

PASSWORD = "s3cret-Pa55-wt27"
OTHER = "Other Author <other@kpt-tests.org>"
TO = "Foo Maintainer <foo@example.org>"


# --------------------------------------------------------------------------
# the server


class Box:
    """An SMTP server's mailbox, with the failures the tests ask for."""

    def __init__(self):
        self.mails: list[tuple[str, list[str], bytes]] = []
        self.drop_after: int | None = None  # drop the connection at the DATA after this many mails
        self.tempfail: set[int] = set()  # DATA numbers (1-based, counting all) answered 451
        self.data_calls = 0
        self.logins: list[tuple[str, bool]] = []

    async def handle_DATA(self, server, session, envelope):
        self.data_calls += 1
        if self.drop_after is not None and len(self.mails) >= self.drop_after:
            # The mail's data went over, no answer comes back: the worst moment to lose a server.
            server.transport.close()
            return "421 4.3.2 gone"
        if self.data_calls in self.tempfail:
            return "451 4.3.0 Try again later"
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"

    def auth(self, server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and data.login == b"kpt-user" and data.password == PASSWORD.encode()
        self.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)  # handled=True would leave the 535 unsaid

    def messages(self):
        return [email.message_from_bytes(b, policy=email.policy.default) for _, _, b in self.mails]

    def ids(self) -> list[str]:
        return [str(m["Message-Id"]) for m in self.messages()]

    def mbox(self, path: Path, *, skip_cover: bool = False) -> Path:
        out = []
        for m, (_, _, raw) in zip(self.messages(), self.mails):
            if skip_cover and str(m["Message-Id"]).endswith(f".0@kpt-tests.org>"):
                continue
            text = raw.decode("utf-8").replace("\r\n", "\n")
            out.append("From mboxrd@z Thu Jan  1 00:00:00 1970\n" + text)
        path.write_text(mf_mboxrd(out))
        return path


def mf_mboxrd(texts):
    from kpatch_tool.mail import mboxrd

    return mboxrd(texts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtpd():
    """smtpd(**SMTP options) -> (Box, port); each server stopped at the end."""
    running = []

    def start(**kw):
        box = Box()
        if kw.pop("auth", False):
            kw["authenticator"] = box.auth
        port = free_port()
        c = Controller(box, hostname="127.0.0.1", port=port, server_hostname="localhost", **kw)
        c.start()
        running.append(c)
        return box, port

    yield start
    for c in running:
        c.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for localhost, made here with openssl."""
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return d / "cert.pem", d / "key.pem"


def tls_context(cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


# --------------------------------------------------------------------------
# the series


@pytest.fixture
def s1(tmp_path, monkeypatch):
    """Series s1: 3 patches (one by another author) on a kernel-shaped tree with
    no scripts; To/Cc from series.toml (the sender among the Cc). 4 mails."""
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("")
    repo = mf.kernel_like_repo(tmp_path / "linux", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 42"), "foo: return the answer")
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: return two")
    (repo / "lib/baz.c").write_text("int baz;\n")
    mf.git(repo, "add", "lib/baz.c")
    mf.git(repo, "commit", "-q", "--author", OTHER, "-m",
           f"baz: add baz\n\nA third file, by someone else.\n\nSigned-off-by: {OTHER}\n")
    tip = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.git(repo, "checkout", "-q", "--detach", base)
    ws = mf.workspace(tmp_path / "ws", tmp_path / "cache", {"linux": repo})
    mf.store_series(ws.root, "s1", "linux", repo, base, tip,
                    tree_toml=f'to = ["{TO}"]\ncc = ["foo-list@vger.kernel.org", "{mf.AUTHOR}"]')
    return ws, repo, base


def use_server(repo: Path, port: int, **extra: str) -> None:
    """SMTP settings in the tree repository's own config (not the global one)."""
    mf.git(repo, "config", "sendemail.smtpServer", "127.0.0.1")
    mf.git(repo, "config", "sendemail.smtpServerPort", str(port))
    for k, v in extra.items():
        mf.git(repo, "config", f"sendemail.{k}", v)


def kpt(ws, *args):
    return CliRunner().invoke(main, ["-w", str(ws.root), "mail", "s1", *args])


def written(ws) -> list[email.message.EmailMessage]:
    d = Path(ws.out_dir) / "mail" / "s1-v1" / "linux"
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
            for f in sorted(d.glob("*.patch"))]


def journal(ws) -> list[dict]:
    p = Path(ws.out_dir) / "mail" / "s1-v1" / mailsend.JOURNAL
    return json.loads(p.read_text())["sent"] if p.exists() else []


IDS = [f"<kpt.s1.v1.linux.{k}@kpt-tests.org>" for k in range(4)]


# --------------------------------------------------------------------------
# tests


def test_send_delivers_every_mail_once_with_the_headers_kpt_wrote(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    use_server(repo, port)
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert "sent 4 mails" in r.output
    assert box.ids() == IDS
    mine = written(ws)
    for got, w in zip(box.messages(), mine):
        for h in ("Message-Id", "Subject", "To", "Cc"):
            assert str(got[h]) == str(w[h]), h
        if str(w["Message-Id"]) != IDS[0]:
            assert str(got["In-Reply-To"]) == str(got["References"]) == IDS[0]
        else:
            assert got["In-Reply-To"] is None and got["References"] is None
        assert str(got["From"]) == mf.AUTHOR  # the sender's From on every mail
    # The envelope: To and Cc as the headers say, less the sender (--suppress-cc=self).
    for mail_from, rcpts, _ in box.mails:
        assert mail_from == "author@kpt-tests.org"
        assert rcpts == ["foo@example.org", "foo-list@vger.kernel.org"]
    # Dates a second apart, in thread order.
    dates = [email.utils.parsedate_to_datetime(str(m["Date"])) for m in box.messages()]
    assert dates == sorted(dates) and len(set(dates)) == 4
    assert [e["message_id"] for e in journal(ws)] == IDS
    # Once sent, sent: a rerun connects to nothing and sends nothing.
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert "nothing to send: all 4 mails are in the send journal" in r.output
    assert len(box.mails) == 4


def test_received_mails_through_b4_and_git_am_give_the_tree_kpt_apply_makes(s1, smtpd, tmp_path):
    ws, repo, base = s1
    box, port = smtpd()
    use_server(repo, port)
    assert kpt(ws, "--send").exit_code == 0
    head = applymod.apply_series(ws, "s1", tree="linux").head_commit
    want = mf.git(repo, "rev-parse", f"{head}^{{tree}}").strip()

    b4 = Path(sys.executable).parent / "b4"
    out = tmp_path / "b4out"
    res = subprocess.run([str(b4), "--no-stdin", "--offline-mode", "am", "-m", str(box.mbox(tmp_path / "got.mbox")),
                          "-o", str(out)], cwd=repo, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Total patches: 3" in res.stdout + res.stderr
    (mbx,) = out.glob("*.mbx")

    for name, box_file in (("b4", mbx), ("direct", box.mbox(tmp_path / "patches.mbox", skip_cover=True))):
        clone = tmp_path / f"am-{name}"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(clone)], check=True)
        mf.git(clone, "checkout", "-q", "--detach", base)
        mf.git(clone, "am", "-q", str(box_file))
        assert mf.git(clone, "rev-parse", "HEAD^{tree}").strip() == want, name
        # The other author survives the sender's From (the in-body From: line).
        authors = mf.git(clone, "log", "--format=%an <%ae>", f"{base}..HEAD").split("\n")[:3]
        assert authors == [OTHER, mf.AUTHOR, mf.AUTHOR], name


def test_a_dropped_connection_stops_the_send_and_a_rerun_sends_only_the_rest(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    box.drop_after = 2
    use_server(repo, port)
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "the server closed the connection" in r.output
    assert "Sent 2 of 4 mails (linux 0-1; 2 in this run), not sent: linux 2-3" in r.output
    assert f"not sent  linux 2" in r.output and IDS[2] in r.output
    assert box.ids() == IDS[:2]
    assert [e["message_id"] for e in journal(ws)] == IDS[:2]

    r = kpt(ws, "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"already sent linux 1   {IDS[1]}" in r.output and f"would send   linux 2   {IDS[2]}" in r.output
    assert len(box.mails) == 2

    box.drop_after = None
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert "sent 2 mails" in r.output and "2 sent earlier" in r.output
    assert box.ids() == IDS  # each once, in order
    # The rest still hangs under the cover that went out in the first run.
    for m in box.messages()[2:]:
        assert str(m["In-Reply-To"]) == IDS[0]
    assert [e["message_id"] for e in journal(ws)] == IDS


def test_a_4xx_answer_stops_the_send_and_the_retry_finishes_it(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    box.tempfail = {3}  # the server defers the second patch once
    use_server(repo, port)
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "linux 2 " + IDS[2] in r.output
    assert "451 4.3.0 Try again later (a temporary failure)" in r.output
    assert "not sent: linux 2-3" in r.output
    assert box.ids() == IDS[:2]
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert box.ids() == IDS


def test_resend_sends_every_mail_again_with_the_same_ids(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    use_server(repo, port)
    assert kpt(ws, "--send").exit_code == 0
    r = kpt(ws, "--resend")
    assert r.exit_code == 0, r.output
    assert "sent 4 mails" in r.output
    assert box.ids() == IDS + IDS
    assert [e["message_id"] for e in journal(ws)] == IDS + IDS


def test_reflect_sends_to_the_sender_only_and_leaves_the_journal_alone(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    use_server(repo, port)
    r = kpt(ws, "--reflect")
    assert r.exit_code == 0, r.output
    assert "reflected 4 mails to Test Author <author@kpt-tests.org> only" in r.output
    assert box.ids() == IDS
    assert all(rcpts == ["author@kpt-tests.org"] for _, rcpts, _ in box.mails)
    assert str(box.messages()[1]["To"]) == TO  # the headers as the list will see them
    assert journal(ws) == []
    assert kpt(ws, "--send").exit_code == 0
    assert box.ids() == IDS + IDS
    assert all("foo@example.org" in rcpts for _, rcpts, _ in box.mails[4:])


def test_starttls_and_auth_with_a_self_signed_cert_and_the_password_shown_nowhere(s1, smtpd, cert):
    ws, repo, _ = s1
    box, port = smtpd(tls_context=tls_context(cert), require_starttls=True, auth=True,
                      auth_require_tls=True)
    use_server(repo, port, smtpEncryption="tls", smtpSSLCertPath=str(cert[0]),
               smtpUser="kpt-user", smtpPass="wrong-" + PASSWORD)
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "refused the login as kpt-user (535" in r.output and "Sent 0 of 4" in r.output
    assert PASSWORD not in r.output
    assert box.mails == [] and box.logins[-1][1] is False

    mf.git(repo, "config", "sendemail.smtpPass", PASSWORD)
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert "127.0.0.1:%d (STARTTLS, as kpt-user)" % port in r.output
    assert box.ids() == IDS and box.logins[-1][1] is True
    assert PASSWORD not in r.output
    for f in Path(ws.out_dir).rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f


def test_an_untrusted_certificate_sends_nothing(s1, smtpd, cert):
    ws, repo, _ = s1
    box, port = smtpd(tls_context=tls_context(cert), require_starttls=True)
    use_server(repo, port, smtpEncryption="tls")  # no smtpSSLCertPath: the system's CAs
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "TLS failed" in r.output and "CERTIFICATE_VERIFY_FAILED" in r.output
    assert box.mails == [] and journal(ws) == []


def test_kpt_toml_settings_and_no_password_there(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    toml = ws.root / "kpt.toml"
    base_toml = toml.read_text()
    toml.write_text(base_toml + f'\n[mail.smtp]\nserver = "127.0.0.1"\nport = {port}\npassword = "x"\n')
    r = kpt(ws, "--send")
    assert r.exit_code == 2 and "a password has no place in kpt.toml" in r.output, r.output
    toml.write_text(base_toml + f'\n[mail.smtp]\nserver = "127.0.0.1"\nport = {port}\n')
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    assert box.ids() == IDS
    # git config wins over kpt.toml, key by key.
    box2, port2 = smtpd()
    mf.git(repo, "config", "sendemail.smtpServerPort", str(port2))
    assert kpt(ws, "--resend").exit_code == 0
    assert box2.ids() == IDS and len(box.mails) == 4


def test_no_server_configured_refuses_before_applying(s1):
    ws, _, _ = s1
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "no SMTP server configured for tree 'linux'" in r.output and "nothing sent" in r.output
    assert not (Path(ws.out_dir) / "mail").exists()


def test_a_sendmail_program_is_a_transport_too_and_its_failure_stops_the_send(s1, tmp_path):
    ws, repo, _ = s1
    spool = tmp_path / "spool"
    spool.mkdir()
    prog = tmp_path / "fake-sendmail"
    # Accepts two mails, then fails: exit status is its only answer.
    prog.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                    f"d = pathlib.Path({str(spool)!r}); n = len(list(d.glob('*.eml')))\n"
                    "if n >= 2 and not (d.parent / 'ok').exists():\n    sys.exit(75)\n"
                    "(d / f'{n}.eml').write_bytes(sys.stdin.buffer.read())\n"
                    "(d / f'{n}.args').write_text(' '.join(sys.argv[1:]))\n")
    prog.chmod(0o755)
    mf.git(repo, "config", "sendemail.sendmailCmd", str(prog))
    r = kpt(ws, "--send")
    assert r.exit_code == 2, r.output
    assert "exited 75" in r.output and "not sent: linux 2-3" in r.output
    (tmp_path / "ok").write_text("")
    r = kpt(ws, "--send")
    assert r.exit_code == 0, r.output
    got = [email.message_from_bytes((spool / f"{n}.eml").read_bytes())["Message-Id"] for n in range(4)]
    assert got == IDS
    assert (spool / "0.args").read_text() == "-i foo@example.org foo-list@vger.kernel.org"


def test_an_unreadable_journal_sends_nothing(s1, smtpd):
    ws, repo, _ = s1
    box, port = smtpd()
    use_server(repo, port)
    j = Path(ws.out_dir) / "mail" / "s1-v1" / mailsend.JOURNAL
    j.parent.mkdir(parents=True)
    j.write_text('{"sent": [')
    r = kpt(ws, "--send")
    assert r.exit_code == 2 and "is unreadable" in r.output, r.output
    assert box.mails == []


def test_journal_entries_are_whole_after_each_mail(tmp_path):
    j = mailsend.Journal(tmp_path / mailsend.JOURNAL)
    j.record({"message_id": "<a@x>", "sha256": "1"})
    j.record({"message_id": "<b@x>", "sha256": "2"})
    again = mailsend.Journal(tmp_path / mailsend.JOURNAL)
    assert list(again.sent()) == ["<a@x>", "<b@x>"]
    assert not (tmp_path / (mailsend.JOURNAL + ".tmp")).exists()


def test_wire_bytes_give_the_sender_from_and_keep_the_author_in_the_body():
    text = ("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"Message-Id: {IDS[1]}\nFrom: {OTHER}\nDate: Tue, 2 Jan 2024 03:04:05 +0000\n"
            "Subject: [PATCH 1/3] baz: add baz\n\nBody.\n---\n")
    raw = mailsend.wire_bytes(text, "Philippe Mathieu-Daudé <p@example.org>", 1_700_000_000)
    assert raw.isascii() and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    m = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert str(m["From"]) == "Philippe Mathieu-Daudé <p@example.org>"
    assert email.utils.parsedate_to_datetime(str(m["Date"])).timestamp() == 1_700_000_000
    assert m.get_content().startswith(f"From: {OTHER}\n\nBody.")
    assert str(m["Message-Id"]) == IDS[1] and len(m.get_all("From")) == 1
