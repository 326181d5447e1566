"""Mail headers in legacy charsets, made UTF-8 before git mailinfo reads them.

Older mail clients put raw 8-bit headers in the charset they declare for the
body (`Content-Type: text/plain; charset=ISO-8859-1`). git mailinfo converts
the body by that charset and RFC 2047 words by theirs, but leaves raw header
bytes alone: `José García` became `Jos\ufffd Garc\ufffda` while the
Signed-off-by, from the body, came out right and no longer matched.
"""

from __future__ import annotations

import codecs
import re

CHARSET_RE = re.compile(rb'(?im)^content-type:[^\n]*(?:\n[ \t][^\n]*)*?charset\s*=\s*"?([A-Za-z0-9._:-]+)"?')


def declared_charset(header: bytes) -> str | None:
    m = CHARSET_RE.search(header)
    if not m:
        return None
    try:
        return codecs.lookup(m.group(1).decode("ascii")).name
    except LookupError:
        return None


def headers_to_utf8(data: bytes) -> bytes:
    """The message with its header block decoded by the declared charset.

    Headers that are UTF-8 already (git format-patch writes RFC 2047 or
    UTF-8) are left as they are. Without a usable declaration, Latin-1 is the
    guess: it maps every byte, so no character is lost to a replacement mark.
    """
    end = data.find(b"\n\n")
    header, rest = (data, b"") if end < 0 else (data[:end], data[end:])
    try:
        header.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    charset = declared_charset(header)
    if charset in (None, "utf-8", "ascii"):
        charset = "latin-1"
    return header.decode(charset, "replace").encode("utf-8") + rest
