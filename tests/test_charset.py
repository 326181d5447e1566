"""Mail headers in legacy charsets: decoded by their declared charset, stored as UTF-8."""

from __future__ import annotations

import email
import email.policy

import pytest

from kpatch_tool import charset, export, gates

from conftest import git

NAME = "Jos\u00e9 Garc\u00eda"


def _latin1_mail(diff: str, *, from_header: bytes, subject: bytes, ctype: bytes) -> bytes:
    head = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            b"From: " + from_header + b" <jose@example.org>\n"
            b"Date: Tue, 2 Jan 2024 03:04:05 +0000\n"
            b"Subject: " + subject + b"\n"
            b"MIME-Version: 1.0\n" + ctype + b"Content-Transfer-Encoding: 8bit\n\n")
    body = ("Se\u00f1al fixed.\n\nSigned-off-by: " + NAME + " <jose@example.org>\n---\n").encode("iso-8859-1")
    return head + body + diff.encode()


@pytest.fixture
def latin1_mbox(series_repo, tmp_path):
    """Two mails as old clients sent them: raw ISO-8859-1 headers with the charset
    declared in Content-Type, and RFC 2047 words in ISO-8859-15."""
    d1 = git(series_repo, "diff", "v1", "work~2")
    d2 = git(series_repo, "diff", "work~2", "work~1")
    m1 = _latin1_mail(d1, from_header=NAME.encode("iso-8859-1"), subject="netfront: se\u00f1al".encode("iso-8859-1"),
                      ctype=b"Content-Type: text/plain; charset=ISO-8859-1\n")
    m2 = _latin1_mail(d2, from_header=b"=?ISO-8859-15?Q?Jos=E9_Garc=EDa?=", subject=b"=?iso-8859-15?q?blk=3A_=A4_fix?=",
                      ctype=b'Content-Type: text/plain;\n\tcharset="iso-8859-1"\n')
    mbox = tmp_path / "old-client.mbox"
    mbox.write_bytes(m1 + b"\n" + m2)
    return mbox


def test_legacy_headers_are_stored_as_utf8_and_author_matches_signoff(series_ws, latin1_mbox):
    s, _ = export.import_stack(series_ws, str(latin1_mbox), "linux", name="old", base="v1")
    p1, p2 = s.trees["linux"].patches
    assert p1.author == f"{NAME} <jose@example.org>" and p1.subject == "netfront: se\u00f1al"
    assert p2.author == f"{NAME} <jose@example.org>" and p2.subject == "blk: \u20ac fix"
    for p in (p1, p2):
        data = p.data()
        assert b"\xef\xbf\xbd" not in data  # no U+FFFD replacement character anywhere
        msg = email.message_from_bytes(data, policy=email.policy.default)
        sob = next(line for line in data.decode("utf-8").splitlines() if line.startswith("Signed-off-by:"))
        assert sob == f"Signed-off-by: {str(msg['From'])}"
        assert "Se\u00f1al fixed." in data.decode("utf-8")
    assert gates.gate_signoff(gates.read_mails([p1.path, p2.path])).ok


def test_declared_charset_and_fallback():
    assert charset.declared_charset(b"Content-Type: text/plain;\n charset=\"ISO-8859-1\"") == "iso8859-1"
    assert charset.declared_charset(b"Content-Type: text/plain; charset=x-unknown") is None
    utf8 = "From: Jos\u00e9\n\nbody \xe9".encode("utf-8")
    assert charset.headers_to_utf8(utf8) == utf8
    # No declaration: Latin-1, which keeps every byte as a character.
    assert charset.headers_to_utf8(b"From: Jos\xe9\n\n\xe9") == "From: Jos\u00e9".encode() + b"\n\n\xe9"
    cp = b"Content-Type: text/plain; charset=windows-1252\nFrom: \x93q\x94\n\nb"
    assert charset.headers_to_utf8(cp).startswith("Content-Type: text/plain; charset=windows-1252\nFrom: \u201cq\u201d".encode())


def test_encoded_newline_in_from_is_refused_with_the_file(series_ws, series_repo, tmp_path):
    d1 = git(series_repo, "diff", "v1", "work~2")
    m = _latin1_mail(d1, from_header=b"=?UTF-8?Q?Eve=0D=0ABcc=3A_x?=", subject=b"net: x",
                     ctype=b"Content-Type: text/plain; charset=ISO-8859-1\n")
    mbox = tmp_path / "crlf.mbox"
    mbox.write_bytes(m)
    try:
        s, _ = export.import_stack(series_ws, str(mbox), "linux", name="crlf", base="v1")
    except export.UsageError as exc:
        assert "crlf.mbox" in exc.message
    else:
        # Stored, it must load and read back as one line.
        assert "\n" not in s.trees["linux"].patches[0].author
