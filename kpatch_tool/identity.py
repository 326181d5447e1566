"""Who signs: placeholder identities, and the developer's own from git.

A Signed-off-by certifies the Developer's Certificate of Origin for a person
the maintainers can reach. An address on a domain reserved for examples and
tests (RFC 2606, RFC 6761: example.com/.net/.org, .example, .test, .invalid,
.localhost) or one that only exists on the sender's machine (git's guessed
`user@host.(none)`, `.localdomain`, `.local`, `.internal`, `.home.arpa`)
reaches nobody: no list accepts a patch with it as its author or in its
sign-off chain. The shipped series are signed by such an alias (`Kpatch
Developers <kpt-dev@example.org>`) until a developer takes them over with
`kpt series signoff` (signoff.py); the mail gates (gates.py) refuse to let
mail go out before that.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import UsageError

# Whole domains (and their subdomains) that name nobody.
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
# Top-level names: reserved (RFC 2606/6761) or local to one machine or network.
RESERVED_TLDS = ("example", "test", "invalid", "localhost", "local", "localdomain", "internal",
                 "home.arpa", "(none)")


def placeholder_reason(who: str) -> str | None:
    """Why `who` ("Name <addr>" or a bare address) cannot sign or author a patch; None if it can."""
    addr = email.utils.parseaddr(who)[1] or who.strip()
    if "@" not in addr:
        return f"'{who.strip()}' has no e-mail address"
    domain = addr.rsplit("@", 1)[1].strip().rstrip(".").lower()
    for d in RESERVED_DOMAINS:
        if domain == d or domain.endswith("." + d):
            return f"{addr} is on {d}, a domain reserved for examples (RFC 2606)"
    for t in RESERVED_TLDS:
        if domain == t or domain.endswith("." + t):
            return f"{addr} is on .{t}, a name that reaches nobody outside this machine or test"
    if "." not in domain:
        return f"{addr} has no domain a mail can reach"
    return None


def is_placeholder(who: str) -> bool:
    return placeholder_reason(who) is not None


@dataclass(frozen=True)
class Ident:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


def _git_config(where: Path, key: str) -> str:
    # The user's own config counts here (gitutil hides it on purpose).
    res = proc.run(["git", "config", "--get", key], cwd=where, timeout=30)
    return res.stdout.strip() if res.ok else ""


def git_identity(where: Path) -> Ident:
    """The developer's `git config user.name` / `user.email` as read in `where`.

    Refused (exit 2) when either is unset or the address is a placeholder:
    that identity would sign patches no list accepts."""
    name, mail = _git_config(where, "user.name"), _git_config(where, "user.email")
    if not name or not mail:
        missing = " and ".join(k for k, v in (("user.name", name), ("user.email", mail)) if not v)
        raise UsageError(f"no git identity in {where}: {missing} not set "
                         f"(git config --global user.name 'Your Name'; git config --global user.email you@host)")
    why = placeholder_reason(mail)
    if why:
        raise UsageError(f"git config user.email: {why}; set your own address "
                         f"(git config --global user.email you@host)")
    return Ident(name, mail)
