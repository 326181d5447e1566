"""`kpt series signoff`: a developer takes a series over, in the patch files themselves.

The shipped series are authored and signed by a placeholder alias (identity.py)
that no list accepts. Taking one over means certifying it yourself:

- every Signed-off-by of a placeholder is replaced by yours (at the place of
  the first one; the others go), or, when the patch has none, yours is added
  at the end of its trailers unless it is there already;
- with `author`, the patches whose author is a placeholder (the project's own
  work) get you as their author, as one adopts an abandoned series. Patches
  by someone else (a backport's upstream author, say) keep their author and
  their sign-off chain; yours goes last, as the one who carries them.

Your identity is `git config user.name/user.email` as read in the workspace.
Running it again changes nothing. All patch files of the series are switched
in one journalled transaction (safefs.Txn): a crash leaves all old or all new.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import identity, safefs
from kpatch_tool.series import Patch, load_series
from kpatch_tool.workspace import Workspace

SOB_RE = re.compile(r"^Signed-off-by:\s*(?P<who>.+)$", re.I)
TRAILER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:\s")


@dataclass
class SignoffResult:
    series: str
    who: identity.Ident
    signed: list[str] = field(default_factory=list)  # tree/file: a Signed-off-by added or replaced
    authored: list[str] = field(default_factory=list)  # tree/file: author is now `who`
    unchanged: list[str] = field(default_factory=list)
    placeholder_authors: list[str] = field(default_factory=list)  # tree/file: left so (no --author)

    @property
    def changed(self) -> bool:
        return bool(self.signed or self.authored)


def _from_field(who: identity.Ident) -> str:
    # git format-patch quotes a name with specials ("Edgar E. Iglesias") and
    # RFC 2047-encodes one outside ASCII; parse_patch reads both back.
    return "From: " + email.utils.formataddr((who.name, who.email), charset="utf-8")


def _split(text: str) -> tuple[list[str], list[str], list[str]]:
    """(header lines, commit message lines, the rest from the `---` or diff on)."""
    head, _, body = text.partition("\n\n")
    lines = body.split("\n")
    end = next((i for i, line in enumerate(lines) if line == "---" or line.startswith("diff --git ")),
               len(lines))
    return head.split("\n"), lines[:end], lines[end:]


def _retitle(head: list[str], who: identity.Ident) -> tuple[list[str], bool]:
    """The header with From: replaced by `who` when it is a placeholder."""
    out: list[str] = []
    changed = False
    i = 0
    while i < len(head):
        line = head[i]
        j = i + 1
        while j < len(head) and head[j][:1] in (" ", "\t"):
            j += 1
        if line[:5].lower() == "from:":
            value = " ".join(x.strip() for x in head[i:j])[5:].strip()
            decoded = str(email.header.make_header(email.header.decode_header(value)))
            if identity.is_placeholder(decoded):
                out.append(_from_field(who))
                changed = True
                i = j
                continue
        out.extend(head[i:j])
        i = j
    return out, changed


def _sign(message: list[str], who: identity.Ident) -> tuple[list[str], bool]:
    """The message with placeholder sign-offs replaced by who's, or who's added last."""
    mine = f"Signed-off-by: {who}"
    me = who.email.lower()
    signers = [email.utils.parseaddr(m["who"])[1].lower() for line in message if (m := SOB_RE.match(line.strip()))]
    out: list[str] = []
    placed = me in signers
    changed = False
    for line in message:
        m = SOB_RE.match(line.strip())
        if m and identity.is_placeholder(m["who"]):
            changed = True
            if not placed:
                out.append(mine)
                placed = True
            continue
        out.append(line)
    if not placed:
        tail: list[str] = []
        while out and not out[-1].strip():
            tail.append(out.pop())
        # A new trailer goes into the last paragraph when that is a trailer block.
        if not out or not TRAILER_RE.match(out[-1]):
            out.append("")
        out += [mine, *tail]
        changed = True
    return out, changed


def rewrite(text: str, who: identity.Ident, *, author: bool) -> tuple[str, bool, bool]:
    """(new text, signed: the sign-offs changed, authored: the author changed) of one patch."""
    head, message, rest = _split(text)
    authored = False
    if author:
        head, authored = _retitle(head, who)
    message, signed = _sign(message, who)
    if not (signed or authored):
        return text, False, False
    return "\n".join(head) + "\n\n" + "\n".join(message + rest), signed, authored


def signoff_series(ws: Workspace, name: str, *, author: bool = False) -> SignoffResult:
    """Add the developer's sign-off to every patch of series `name` (and with
    author, make them the author of the placeholder-authored ones), atomically."""
    series = load_series(ws, name)
    who = identity.git_identity(ws.root)
    res = SignoffResult(name, who)
    txn = safefs.Txn(series.path)
    for t, st in series.trees.items():
        for p in st.patches:
            _one(txn, res, t, p, who, author)
    try:
        txn.commit()
    except OSError as exc:
        raise safefs.os_error(exc) from None
    load_series(ws, name)  # what was written still loads (it must: only headers and trailers changed)
    return res


def _one(txn: safefs.Txn, res: SignoffResult, tree: str, p: Patch, who: identity.Ident, author: bool) -> None:
    label = f"{tree}/{p.file}"
    text = Path(p.path).read_text(encoding="utf-8")
    new, signed, authored = rewrite(text, who, author=author)
    if signed:
        res.signed.append(label)
    if authored:
        res.authored.append(label)
    if new == text:
        res.unchanged.append(label)
    else:
        txn.write(Path(p.path), new.encode("utf-8"))
    if not author and identity.is_placeholder(p.author):
        res.placeholder_authors.append(label)
