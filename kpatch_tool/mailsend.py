"""Sending the mails `kpt mail` wrote: SMTP one mail at a time, and a journal.

Python's smtplib talks to the server, not git send-email: the server's answer
to each mail's DATA is what tells "accepted" from "not sent", and that is what
the journal must record after every single mail. git send-email reports
success or failure for the whole run, and after a failure in the middle its
output would have to be parsed to learn which mails got through.

The journal (`send-journal.json` in the series' mail folder, beside the
per-tree folders) lists every Message-Id the server accepted. A rerun sends
only the mails not in it, byte for byte the same headers (ids, threading), so
a series half sent by a dropped connection or a 4xx is finished without
sending any mail twice; `resend` sends them all again on purpose. The one
window left is between the server's 250 and the journal reaching the disk:
a crash exactly there sends that one mail again on the rerun.

Settings come from git config (`sendemail.*`, as git send-email reads them,
run in the tree's worktree so the tree repository's own config counts) or
from kpt.toml's `[mail.smtp]`. The password is read from git config or a git
credential helper only, kept out of every message, log and the journal.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import json
import os
import shlex
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import EXIT_USAGE, KptError, UsageError
from kpatch_tool.mail import NOT_SENDABLE, MailResult, TreeMail, header, join_mail, split_mail

JOURNAL = "send-journal.json"
LOCK = ".send.lock"
TIMEOUT = 60  # seconds for each SMTP exchange; a stuck server is a failure, not a hang

SMTP_HINT = ("set one with `git config --global sendemail.smtpServer smtp.example.org` "
             "(and sendemail.smtpServerPort, sendemail.smtpEncryption=tls, sendemail.smtpUser), "
             "or in kpt.toml under [mail.smtp]; or `git config --global sendemail.sendmailCmd "
             "/usr/sbin/sendmail`")

# git config name (lower case, as --get-regexp prints it) -> SmtpSettings field
GIT_KEYS = {"smtpserver": "server", "smtpserverport": "port", "smtpencryption": "encryption",
            "smtpuser": "user", "smtppass": "password", "smtpsslcertpath": "cert_path",
            "smtpdomain": "domain", "sendmailcmd": "sendmail_cmd", "envelopesender": "envelope_sender"}
TOML_KEYS = {"server", "port", "encryption", "user", "cert_path", "domain", "envelope_sender"}


class SendError(KptError):
    """Sending stopped part way, or could not start.

    Exit 2, the code for what the user has to act on before rerunning (the
    server, the settings, a recipient): the codes 3-6 name pipeline stages
    whose failure is in the patches or the kernel, 7 a host package `kpt
    doctor` can name. A rerun is always safe (the journal), so a script
    needs no code of its own to tell "retry" from "fix first".
    """

    exit_code = EXIT_USAGE


# --------------------------------------------------------------------------
# settings


@dataclass
class SmtpSettings:
    server: str | None = None
    port: int | None = None
    encryption: str = ""  # "" (plain), "tls" (STARTTLS) or "ssl" (SMTPS), git's words
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_path: str | None = None  # None: the system's CAs; "": no verification (git's meaning)
    domain: str | None = None  # the EHLO name
    sendmail_cmd: str | None = None
    envelope_sender: str | None = None
    source: dict[str, str] = field(default_factory=dict)  # field -> "git config" / "kpt.toml"

    @property
    def configured(self) -> bool:
        return bool(self.server or self.sendmail_cmd)

    @property
    def program(self) -> list[str] | None:
        """The sendmail-like program to pipe mails to, if that is the transport."""
        if self.sendmail_cmd:
            return shlex.split(self.sendmail_cmd)
        if self.server and self.server.startswith("/"):
            return [self.server]  # git send-email: an absolute path is a sendmail program
        return None

    @property
    def effective_port(self) -> int:
        return self.port or (465 if self.encryption == "ssl" else 25)  # git send-email's defaults

    def describe(self) -> str:
        """Where mails go, for messages: never the password."""
        if not self.configured:
            return "no SMTP server configured"
        if self.program:
            return f"`{' '.join(self.program)}`"
        how = {"tls": "STARTTLS", "ssl": "SSL"}.get(self.encryption, "no encryption")
        who = f", as {self.user}" if self.user else ""
        return f"{self.server}:{self.effective_port} ({how}{who})"

    def key(self) -> tuple:
        return (self.server, self.effective_port, self.encryption, self.user, self.cert_path,
                self.domain, self.sendmail_cmd, self.envelope_sender)


def _git_config(where: Path) -> dict[str, str]:
    # One call for all keys; no log: smtpPass is among them.
    res = proc.run(["git", "config", "-z", "--get-regexp", r"^sendemail\."], cwd=where, timeout=30)
    out: dict[str, str] = {}
    if not res.ok:
        return out  # exit 1: no such keys
    for item in res.stdout.split("\0"):
        if not item:
            continue
        name, _, value = item.partition("\n")
        out[name.split(".", 1)[1].lower()] = value
    return out


def settings(where: Path, toml: dict | None = None) -> SmtpSettings:
    """The SMTP settings git send-email would use in `where` (a worktree of the
    tree, so its repository's config counts), over kpt.toml's [mail.smtp]."""
    s = SmtpSettings()
    toml = dict(toml or {})
    bad = sorted(set(toml) - TOML_KEYS)
    if bad:
        what = ("a password has no place in kpt.toml (set sendemail.smtpPass in your git config, "
                "or use a git credential helper)") if {"password", "pass"} & set(bad) else \
            f"known keys: {', '.join(sorted(TOML_KEYS))}"
        raise UsageError(f"kpt.toml [mail.smtp]: unknown key(s) {', '.join(bad)}; {what}")
    for k, v in toml.items():
        setattr(s, k, v)
        s.source[k] = "kpt.toml"
    for gk, v in _git_config(where).items():
        f = GIT_KEYS.get(gk)
        if f:
            setattr(s, f, v)
            s.source[f] = "git config"
    if isinstance(s.port, str):
        if not s.port.strip().isdigit():
            raise UsageError(f"sendemail.smtpServerPort: not a port number: {s.port!r}")
        s.port = int(s.port)
    s.encryption = (s.encryption or "").strip().lower()
    if s.encryption in ("none", "plain"):
        s.encryption = ""
    if s.encryption not in ("", "tls", "ssl"):
        raise UsageError(f"smtpEncryption {s.encryption!r}: use tls (STARTTLS) or ssl (SMTPS), "
                         f"as for git send-email")
    return s


def _credential(s: SmtpSettings, where: Path) -> str | None:
    """Ask git's credential helpers, as git send-email does; prompt only on a terminal."""
    env = dict(os.environ)
    if not sys.stdin.isatty():
        env["GIT_TERMINAL_PROMPT"] = "0"
    query = f"protocol=smtp\nhost={s.server}:{s.effective_port}\nusername={s.user}\n\n"
    res = proc.run(["git", "credential", "fill"], cwd=where, env=env, input=query, timeout=300)
    if not res.ok:
        return None
    for line in res.stdout.splitlines():
        if line.startswith("password="):
            return line.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------
# the journal


class Journal:
    """What the server accepted, one entry per mail, in a JSON file replaced
    atomically after each entry: an entry is in it whole or not at all."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = []
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.entries = list(data["sent"])
            except (ValueError, KeyError, TypeError) as exc:
                # Guessing here could send a series twice: the user decides.
                raise UsageError(f"send journal {path} is unreadable ({exc}); nothing sent "
                                 f"(move it away to send everything again)") from None

    def sent(self) -> dict[str, dict]:
        """Message-Id -> its latest entry."""
        return {e["message_id"]: e for e in self.entries}

    def record(self, entry: dict) -> None:
        self.entries.append(entry)
        data = json.dumps({"sent": self.entries}, indent=1) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the rename itself must survive a crash
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK, "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `kpt mail --send` is sending from {folder}; nothing sent") from None
        yield
    finally:
        fh.close()


# --------------------------------------------------------------------------
# the mails


@dataclass
class Outgoing:
    tree: str
    index: int  # 0 for the cover
    path: Path
    message_id: str
    subject: str
    to: list[str]  # envelope recipients, To and Cc as the headers name them
    text: str  # as written, the mbox From_ line first
    sha256: str  # of the file as written: tells a changed mail from the one sent
    status: str = "todo"  # todo, sent (earlier run), done (this run), failed
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.tree} {self.index}"


def _addrs(text: str, *names: str) -> list[str]:
    vals = [header(text, n) for n in names]
    out: list[str] = []
    for _, a in email.utils.getaddresses([v for v in vals if v]):
        if a and a.lower() not in {x.lower() for x in out}:
            out.append(a)
    return out


def outgoing(result: MailResult) -> list[Outgoing]:
    mails = []
    for t, tm in result.trees.items():
        for k, f in enumerate(tm.files):
            text = f.read_text(encoding="utf-8")
            if not text.startswith("From "):
                text = "From kpt Mon Sep 17 00:00:00 2001\n" + text  # header() expects the From_ line
            if header(text, NOT_SENDABLE):
                raise UsageError(f"{f}: marked {NOT_SENDABLE} (a preview with a placeholder identity); "
                                 f"nothing sent: take the series over (kpt series signoff) and run kpt mail again")
            mails.append(Outgoing(t, k, f, header(text, "Message-Id") or "", " ".join(
                (header(text, "Subject") or "").split()), _addrs(text, "To", "Cc"), text,
                hashlib.sha256(text.encode("utf-8")).hexdigest()))
    return mails


def wire_bytes(text: str, sender: str, date: float) -> bytes:
    """The mail as it goes out, rewritten the way git send-email does it:
    the sender's From (an author who is not the sender moves to an in-body
    From: line, which git am and b4 read back), and a Date of now, a second
    apart per mail so the thread sorts in order; the author date written by
    format-patch would file the series weeks back in the archives."""
    first, fields, body = split_mail(text)
    author = header(text, "From") or sender
    if email.utils.parseaddr(author)[1].lower() != email.utils.parseaddr(sender)[1].lower():
        body = f"From: {author}\n\n" + body
    # A name outside ASCII must be RFC 2047 encoded in a header (as the cover's From is).
    vals = {"from": "From: " + email.utils.formataddr(email.utils.parseaddr(sender), charset="utf-8"),
            "date": f"Date: {email.utils.formatdate(date, localtime=True)}"}
    fields = [[vals.pop(n)] if (n := f[0].split(":", 1)[0].strip().lower()) in vals else f for f in fields]
    fields += [[v] for v in vals.values()]
    out = join_mail(first, fields, body).partition("\n")[2]
    return out.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


# --------------------------------------------------------------------------
# transports


class _Smtp:
    def __init__(self, s: SmtpSettings, where: Path):
        self.s = s
        ctx = None
        if s.encryption:
            ctx = ssl.create_default_context()
            if s.cert_path == "":
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif s.cert_path:
                p = Path(s.cert_path).expanduser()
                if not p.exists():
                    raise SendError(f"sendemail.smtpSSLCertPath {p} does not exist")
                ctx.load_verify_locations(cafile=str(p) if p.is_file() else None,
                                          capath=str(p) if p.is_dir() else None)
        host, port = s.server, s.effective_port
        try:
            if s.encryption == "ssl":
                self.conn = smtplib.SMTP_SSL(host, port, local_hostname=s.domain, timeout=TIMEOUT,
                                             context=ctx)
            else:
                self.conn = smtplib.SMTP(host, port, local_hostname=s.domain, timeout=TIMEOUT)
            self.conn.ehlo()
            if s.encryption == "tls":
                if not self.conn.has_extn("starttls"):
                    raise SendError(f"{s.describe()}: the server does not offer STARTTLS "
                                    f"(sendemail.smtpEncryption=ssl for a port that speaks TLS from the start)")
                self.conn.starttls(context=ctx)
                self.conn.ehlo()
            if s.user:
                password = s.password if s.password is not None else _credential(s, where)
                if password is None:
                    raise SendError(f"{s.describe()}: no password for {s.user} (set sendemail.smtpPass, "
                                    f"or store one with a git credential helper)")
                try:
                    self._login(s.user, password)
                except smtplib.SMTPAuthenticationError as exc:
                    raise SendError(f"{s.describe()}: the server refused the login as {s.user} "
                                    f"({_answer(exc)})") from None
                except smtplib.SMTPNotSupportedError:
                    hint = "" if s.encryption else " (most offer it over TLS only: sendemail.smtpEncryption=tls)"
                    raise SendError(f"{s.describe()}: the server offers no AUTH{hint}") from None
        except ssl.SSLError as exc:
            raise SendError(f"{s.describe()}: TLS failed: {exc.reason or exc} (sendemail.smtpSSLCertPath names "
                            f"the CA certificate to trust)") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(f"{s.describe()}: cannot connect: {_why(exc)}") from None

    def _login(self, user: str, password: str) -> None:
        # One mechanism, not smtplib.login()'s walk through all of them: after
        # a 535 the next mechanism fails the same way, one more failed login
        # against the account (servers lock accounts out after a few).
        offered = self.conn.esmtp_features.get("auth", "").upper().split()
        for mech in ("CRAM-MD5", "PLAIN", "LOGIN"):
            if mech in offered:
                break
        else:
            raise smtplib.SMTPNotSupportedError("no AUTH mechanism in common")
        self.conn.user, self.conn.password = user, password
        try:
            self.conn.auth(mech, getattr(self.conn, "auth_" + mech.lower().replace("-", "_")))
        finally:
            self.conn.password = None

    def send(self, envelope_from: str, rcpts: list[str], data: bytes) -> dict[str, str]:
        opts = ["BODY=8BITMIME"] if not data.isascii() and self.conn.has_extn("8bitmime") else []
        refused = self.conn.sendmail(envelope_from, rcpts, data, mail_options=opts)
        return {a: f"{c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
                for a, (c, m) in refused.items()}

    def close(self) -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            self.conn.quit()


class _Program:
    """A sendmail-like program, once per mail; exit 0 is its acceptance."""

    def __init__(self, s: SmtpSettings, where: Path):
        self.argv, self.where = s.program, where

    def send(self, envelope_from: str, rcpts: list[str], data: bytes) -> dict[str, str]:
        res = proc.run([*self.argv, "-i", *rcpts], cwd=self.where, timeout=TIMEOUT * 5,
                       input=data.replace(b"\r\n", b"\n"), text=False)
        if not res.ok:
            tail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise smtplib.SMTPException(f"{self.argv[0]} exited {res.returncode}"
                                        + (f": {tail[0]}" if tail else ""))
        return {}

    def close(self) -> None:
        pass


def _answer(exc: smtplib.SMTPResponseException) -> str:
    m = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(m.split())}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient was refused: " + "; ".join(
            f"{a}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
            for a, (c, m) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        kind = " (a temporary failure)" if 400 <= exc.smtp_code < 500 else ""
        return f"the server answered {_answer(exc)}{kind}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "the server closed the connection"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer from the server in {TIMEOUT} s"
    return str(exc) or exc.__class__.__name__


# --------------------------------------------------------------------------
# sending


@dataclass
class SendReport:
    mails: list[Outgoing]
    reflect: bool = False
    warnings: list[str] = field(default_factory=list)
    via: dict[str, str] = field(default_factory=dict)  # tree -> settings.describe()

    def with_status(self, *st: str) -> list[Outgoing]:
        return [m for m in self.mails if m.status in st]


def _ranges(mails: list[Outgoing]) -> str:
    """'linux 0-2, qemu 1' for messages."""
    by: dict[str, list[int]] = {}
    for m in mails:
        by.setdefault(m.tree, []).append(m.index)
    parts = []
    for t, ks in by.items():
        runs, start = [], ks[0]
        for a, b in zip(ks, ks[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"{t} {','.join(runs)}")
    return ", ".join(parts) or "none"


def plan(result: MailResult, *, resend: bool = False, reflect: bool = False) -> tuple[SendReport, Journal]:
    journal = Journal(result.out / JOURNAL)
    report = SendReport(outgoing(result), reflect=reflect)
    done = journal.sent()
    for m in report.mails:
        if not m.message_id:
            raise UsageError(f"{m.path} has no Message-Id; write the mails again with `kpt mail`")
        e = done.get(m.message_id)
        if e and not resend and not reflect:
            m.status = "sent"
            if e.get("sha256") != m.sha256:
                report.warnings.append(
                    f"{m.label} {m.message_id} went out on {e.get('at', '?')} and has changed since; "
                    f"not sent again (--resend sends the whole series again)")
    return report, journal


def send(result: MailResult, *, settings_for: Callable[[TreeMail], SmtpSettings],
         resend: bool = False, reflect: bool = False, dry_run: bool = False, force: bool = False,
         say: Callable[[str], None] | None = None) -> SendReport:
    """Send what the journal does not list as accepted, tree by tree, cover
    first; stop at the first mail the server does not accept.

    reflect sends every mail to the sender alone and leaves the journal as it
    is; dry_run decides and reports, connecting to nothing.
    """
    say = say or (lambda m: None)
    if result.unsendable:
        raise UsageError(f"{unsendable_message(result)}; nothing sent (--force does not pass it)")
    if result.blocked and not (force or result.forced):
        names = ", ".join(f"{t}:{g.name}" for t, g in result.failed_gates())
        raise UsageError(f"gates failed ({names}); nothing sent (fix the patches, or --force)")
    report, journal = plan(result, resend=resend, reflect=reflect)
    sender = result.sender or header(report.mails[0].text, "From") or ""
    me = email.utils.parseaddr(sender)[1]
    if not me:
        raise UsageError("no sender address (git config user.email); nothing sent")
    _address(report, me, reflect)
    todo = report.with_status("todo")
    lonely = [m for m in todo if not m.to]
    if lonely:
        raise UsageError(f"{_ranges(lonely)}: no To or Cc; nothing sent (series.toml [trees.T] to/cc)")
    conf = {t: settings_for(tm) for t, tm in result.trees.items() if any(m.tree == t for m in todo)}
    report.via = {t: s.describe() for t, s in conf.items()}
    if dry_run or not todo:
        return report
    for t, s in conf.items():
        if not s.configured:
            raise SendError(f"no SMTP server configured for tree '{t}'; nothing sent: {SMTP_HINT}")
    with _locked(result.out):
        # Another run may have sent some while this one was preparing.
        report, journal = plan(result, resend=resend, reflect=reflect)
        _address(report, me, reflect)
        report.via = {t: s.describe() for t, s in conf.items()}
        transports: dict[tuple, _Smtp | _Program] = {}
        now = time.time()
        try:
            for n, m in enumerate(report.with_status("todo")):
                s = conf[m.tree]
                try:
                    if s.key() not in transports:
                        say(f"connecting to {s.describe()}")
                        transports[s.key()] = (_Program if s.program else _Smtp)(s, result.trees[m.tree].worktree)
                    data = wire_bytes(m.text, sender, now + n)
                    m.refused = transports[s.key()].send(s.envelope_sender or me, m.to, data)
                except SendError as exc:
                    m.status = "failed"
                    raise _stopped(report, exc.message) from None
                except (OSError, smtplib.SMTPException) as exc:
                    m.status = "failed"
                    raise _stopped(report, f"{m.label} {m.message_id} ({m.subject}): {_why(exc)}") from None
                m.status = "done"
                if not reflect:
                    journal.record({"message_id": m.message_id, "tree": m.tree, "file": m.path.name,
                                    "subject": m.subject, "sha256": m.sha256, "recipients": m.to,
                                    "refused": m.refused, "via": s.describe(),
                                    "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                say(f"sent {m.label} {m.message_id} {m.subject}")
                if m.refused:
                    report.warnings.append(f"{m.label} {m.message_id}: the server refused "
                                           + "; ".join(f"{a} ({r})" for a, r in m.refused.items())
                                           + " (the other recipients have it; it counts as sent)")
        finally:
            for c in transports.values():
                c.close()
    return report


def unsendable_message(result: MailResult) -> str:
    """One line: which hard gate failed where, first error named."""
    bad = result.unsendable_gates()
    first = next((e for _, g in bad for e in g.errors), "")
    more = sum(len(g.errors) for _, g in bad) - 1
    where = ", ".join(f"{t}:{g.name}" for t, g in bad)
    return (f"not sendable ({where}): {first}" + (f" (and {more} more)" if more > 0 else "")
            + "; take the series over with `kpt series signoff NAME --author`")


def _address(report: SendReport, me: str, reflect: bool) -> None:
    for m in report.mails:
        if reflect:
            m.to = [me]
        else:
            # git send-email's --suppress-cc=self, as kpt used it: the sender
            # has the mails already.
            m.to = [a for a in m.to if a.lower() != me.lower()] or m.to


def _stopped(report: SendReport, why: str) -> SendError:
    sent = report.with_status("sent", "done")
    left = report.with_status("todo", "failed")
    now = report.with_status("done")
    msg = (f"sending stopped: {why}. Sent {len(sent)} of {len(report.mails)} mails "
           f"({_ranges(sent)}; {len(now)} in this run), not sent: {_ranges(left)}")
    if report.reflect:
        msg += ". (--reflect: only to you; the journal is untouched)"
    else:
        msg += ". Rerun with --send to send the rest (same Message-Ids; nothing goes out twice)"
    detail = "\n".join(f"{'sent    ' if m.status in ('sent', 'done') else 'not sent'}  {m.label:<9} "
                       f"{m.message_id}  {m.subject}" for m in report.mails)
    return SendError(msg, detail=detail)
