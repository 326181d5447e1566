"""Checks a series must pass before it is mailed, each a named gate.

The gates read the mails exactly as they will go out (git format-patch output),
inside the series' worktree, so the tree's own tools judge them: its
scripts/checkpatch.pl (Linux and QEMU ship one; Xen 4.17 does not, and the gate
is skipped with a note), then the things reviewers bounce a series for first:
a Signed-off-by from the author, `Fixes:` tags that name a real commit under
the series with its real subject (netdev's verify_fixes does the same), and a
`subsystem: summary` subject of the length the project wants.

A gate fails on errors (they block mailing unless --force); warnings are
listed but do not block.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import gitutil, identity, proc
from kpatch_tool.errors import UsageError

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"

# Summary length (after the [PATCH ...] prefix) each project asks for.
SUBJECT_MAX = {"linux": 75, "qemu": 76, "xen": 80}
# `subsystem: summary`, subsystems without spaces, several allowed
# ("media: uvcvideo: ..."), and git's own revert subjects.
SUBJECT_RE = re.compile(r'^(?:Revert "|Reapply ")?[\w.+*{},/-]+(?:: [\w.+*{},/-]+)*: \S')
CHECKPATCH_LINE = re.compile(r"^(?P<file>[^\s:]*):(?P<line>\d*): (?P<kind>ERROR|WARNING|CHECK): (?P<msg>.*)$")
FIXES_RE = re.compile(r"^Fixes:\s*(?P<sha>\S+)(?:\s+(?P<rest>.*))?$", re.I)
SOB_RE = re.compile(r"^Signed-off-by:\s*(?P<who>.+)$", re.I)
# The trailers that speak for a person's certificate of origin (the kernel's submitting-patches).
CHAIN_RE = re.compile(r"^(?P<tag>Signed-off-by|Co-developed-by):\s*(?P<who>.+)$", re.I)
# Linux stable's two forms of naming the upstream commit, first in the body
# (Documentation/process/stable-kernel-rules.rst), and git cherry-pick -x's.
STABLE_LINE_RE = re.compile(r"^(?:commit (?P<a>[0-9a-f]{40}) upstream\.|\[ Upstream commit (?P<b>[0-9a-f]{40}) \])$")
CHERRY_RE = re.compile(r"^\(cherry picked from commit (?P<c>[0-9a-f]{40})\)$")
STABLE_LIST = "stable@vger.kernel.org"
STABLE_PREFIX_RE = re.compile(r"\b\d+\.\d+(?:\.y)?\b")  # [PATCH 6.1.y], [PATCH 6.1]


@dataclass
class GateResult:
    name: str  # checkpatch, signoff, fixes, subject
    status: str  # pass, fail, warn, skip
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""
    hard: bool = False  # a failure --force does not pass

    @property
    def unsendable(self) -> bool:
        return self.hard and self.status == FAIL

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "errors": self.errors,
                "warnings": self.warnings, "note": self.note, "hard": self.hard}


def _finish(name: str, errors: list[str], warnings: list[str], note: str = "") -> GateResult:
    status = FAIL if errors else WARN if warnings else PASS
    return GateResult(name, status, errors, warnings, note)


@dataclass
class Mail:
    """One patch mail, split the way the gates read it."""

    path: Path
    subject: str  # full Subject, [PATCH ...] included
    summary: str  # without the bracketed prefixes
    author: str  # From: address (the patch author)
    message: list[str]  # commit message lines (body up to the first ---)
    from_header: str = ""  # the whole From: ("Name <addr>")
    from_line: int = 0  # line of From: in the file
    body_line: int = 0  # line of message[0] in the file

    def line_of(self, k: int) -> int:
        """The file's line number of message[k]."""
        return self.body_line + k

    @classmethod
    def read(cls, path: Path) -> Mail:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = " ".join(str(msg.get("Subject", "")).split())
        summary = re.sub(r"^(\[[^\]]*\]\s*)+", "", subject)
        from_header = " ".join(str(msg.get("From", "")).split())
        author = email.utils.parseaddr(from_header)[1]
        head = raw.partition(b"\n\n")[0].split(b"\n")
        from_line = next((i for i, line in enumerate(head, 1) if line[:5].lower() == b"from:"), 0)
        try:
            body = msg.get_content() if not msg.is_multipart() else ""
        except (LookupError, KeyError):
            body = raw.partition(b"\n\n")[2].decode("utf-8", "replace")
        lines = []
        for line in body.splitlines():
            if line.rstrip() == "---" or line.startswith("diff --git "):
                break
            lines.append(line)
        return cls(path, subject, summary, author, lines, from_header, from_line, len(head) + 2)


def read_mails(patches: list[Path]) -> list[Mail]:
    return [Mail.read(p) for p in patches]


# --------------------------------------------------------------------------
# the gates


def checkpatch_args(kind: str) -> list[str]:
    # Not --mailback (b4's choice): with it, checkpatch exits before its
    # Signed-off-by check when nothing else was wrong, so a patch without one
    # passes (seen with Linux 6.1's checkpatch.pl).
    if kind == "qemu":
        # QEMU's fork takes the options its .b4-config uses, not --showfile.
        return ["-q", "--terse", "--no-summary"]
    return ["--terse", "--no-summary", "--showfile"]


def gate_checkpatch(worktree: Path, patches: list[Path], kind: str, *, log: Path | None = None,
                    timeout: float = 300) -> GateResult:
    script = worktree / "scripts" / "checkpatch.pl"
    if not script.is_file():
        return GateResult("checkpatch", SKIP, note=f"the {kind} tree has no scripts/checkpatch.pl (Xen 4.17 ships none)")
    proc.require("perl", "perl")
    errors: list[str] = []
    warnings: list[str] = []
    for p in patches:
        # Run from the top of the tree: checkpatch finds the tree there (and its
        # spelling list, const_structs, git history for commit-id checks).
        res = proc.run(["perl", "scripts/checkpatch.pl", *checkpatch_args(kind), str(p)],
                       cwd=worktree, timeout=timeout, log=log)
        if res.timed_out:
            errors.append(f"{p.name}: checkpatch.pl timed out after {timeout:.0f}s")
            continue
        found = 0
        for line in (res.stdout + res.stderr).splitlines():
            m = CHECKPATCH_LINE.match(line.strip())
            if m:
                where = f"{m['file']}:{m['line']}" if m["file"] else f"line {m['line']}"
                text = f"{p.name}: {where}: {m['kind']}: {m['msg']}"
                (errors if m["kind"] == "ERROR" else warnings).append(text)
                found += 1
            elif re.match(r"^(ERROR|WARNING): ", line.strip()):
                kind_ = line.strip().split(":", 1)[0]
                (errors if kind_ == "ERROR" else warnings).append(f"{p.name}: {line.strip()}")
                found += 1
        if res.returncode != 0 and not found:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            errors.append(f"{p.name}: checkpatch.pl exited {res.returncode}: {' / '.join(tail) or 'no output'}")
    return _finish("checkpatch", errors, warnings)


def _addr(who: str) -> str:
    return email.utils.parseaddr(who)[1].lower()


def gate_signoff(mails: list[Mail]) -> GateResult:
    errors = []
    for m in mails:
        sobs = [_addr(mm["who"]) for line in m.message if (mm := SOB_RE.match(line.strip()))]
        if not sobs:
            errors.append(f"{m.path.name}: no Signed-off-by: line (add `Signed-off-by: <author>`, git commit -s)")
        elif m.author.lower() not in sobs:
            errors.append(f"{m.path.name}: no Signed-off-by from the author <{m.author}> "
                          f"(signed off by: {', '.join(sobs)})")
    return _finish("signoff", errors, [])


def gate_identity(mails: list[Mail], sender: str | None = None) -> GateResult:
    """No placeholder identity (identity.py) as an author, in a sign-off chain, or as the sender.

    Hard: --force does not pass it."""
    errors = []
    if sender and (why := identity.placeholder_reason(sender)):
        errors.append(f"sender {sender} (git config user.email, the From of every mail): {why}")
    for m in mails:
        if (why := identity.placeholder_reason(m.from_header or m.author)):
            errors.append(f"{m.path.name}:{m.from_line}: From: {m.from_header}: {why}")
        for k, line in enumerate(m.message):
            cm = CHAIN_RE.match(line.strip())
            if cm and (why := identity.placeholder_reason(cm["who"])):
                errors.append(f"{m.path.name}:{m.line_of(k)}: {cm['tag']}: {cm['who'].strip()}: {why}")
    warnings = [w for m in mails for w in _maintainers_entries(m)]
    res = _finish("identity", errors, warnings, "" if errors else "authors, sign-off chains and sender")
    res.hard = True
    if errors:
        res.note = "take the series over first: kpt series signoff NAME --author (README, 'Taking over a series')"
    return res


def _maintainers_entries(m: Mail) -> list[str]:
    """Placeholder M:/R: people a patch adds to a MAINTAINERS file (a warning: no list takes them,
    and `kpt series signoff` does not edit diffs)."""
    out: list[str] = []
    current = ""
    for n, line in enumerate(m.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.startswith("+++ "):
            current = line[4:].strip()
        elif current.endswith("MAINTAINERS") and (pm := re.match(r"^\+([MR]):\s*(.+)$", line)):
            if (why := identity.placeholder_reason(pm[2])):
                out.append(f"{m.path.name}:{n}: MAINTAINERS {pm[1]}: {pm[2].strip()}: {why}; name a person there")
    return out


def _stable_line(m: Mail) -> tuple[int, str | None]:
    """(index in message, upstream id) of the first non-empty body line, an in-body From: skipped."""
    for k, line in enumerate(m.message):
        text = line.strip()
        if not text or text.lower().startswith("from:"):
            continue
        sm = STABLE_LINE_RE.match(text)
        return k, (sm["a"] or sm["b"]) if sm else None
    return 0, None


def _check_backport(m: Mail, bp, kind: str, sender: str | None) -> list[str]:
    errors = []
    tag = f"{m.path.name}"
    if kind == "linux":
        k, sha = _stable_line(m)
        if sha is None:
            errors.append(f"{tag}:{m.line_of(k)}: a backport of {bp.commit[:12]} starts its message with "
                          f"'commit {bp.commit} upstream.' (stable-kernel-rules)")
        elif sha != bp.commit:
            errors.append(f"{tag}:{m.line_of(k)}: names upstream commit {sha}, series.toml "
                          f"(line {bp.line}) declares {bp.commit}")
    else:
        found = [cm["c"] for line in m.message if (cm := CHERRY_RE.match(line.strip()))]
        if bp.commit not in found:
            errors.append(f"{tag}: a backport of {bp.commit[:12]} carries '(cherry picked from commit "
                          f"{bp.commit})' (git cherry-pick -x)")
    if bp.subject and m.summary != bp.subject:
        errors.append(f"{tag}: subject '{m.summary}' is not the upstream one '{bp.subject}'")
    if bp.author and _addr(bp.author) != m.author.lower():
        errors.append(f"{tag}:{m.from_line}: From: {m.from_header}: a backport keeps the upstream "
                      f"author {bp.author}")
    chain = [(k, _addr(mm["who"])) for k, line in enumerate(m.message) if (mm := SOB_RE.match(line.strip()))]
    if len(chain) < 2:
        errors.append(f"{tag}: a backport keeps the upstream sign-off chain and adds the sign-off of "
                      f"who carries it (found {len(chain)} Signed-off-by)")
    elif sender and chain[-1][1] != _addr(sender):
        k = chain[-1][0]
        errors.append(f"{tag}:{m.line_of(k)}: the last Signed-off-by is {chain[-1][1]}, not the sender's "
                      f"{_addr(sender)}: who sends a backport signs it last (kpt series signoff)")
    return errors


def gate_backport(mails: list[Mail], backports: dict[str, object], kind: str, *, sender: str | None = None,
                  subject_prefix: str = "", to: list[str] | None = None) -> GateResult:
    """Declared backports (series.toml [[backport]], keyed here by mail file name) in the stable form,
    and for Linux the thread goes to the stable list with the stable branch in its prefix."""
    if not backports:
        return GateResult("backport", SKIP, note="no declared backports")
    errors: list[str] = []
    for m in mails:
        bp = backports.get(m.path.name)
        if bp is not None:
            errors += _check_backport(m, bp, kind, sender)
    if kind == "linux":
        if to is not None and STABLE_LIST not in [_addr(a) for a in to]:
            errors.append(f"a backport goes To: {STABLE_LIST} (series.toml [trees.T] to)")
        if not STABLE_PREFIX_RE.search(subject_prefix):
            errors.append(f"subject prefix '{subject_prefix}' names no stable branch "
                          f"(subject_prefix = \"PATCH 6.1.y\")")
    return _finish("backport", errors, [], f"{len(backports)} declared")


def _snapshot(worktree: Path, base: str) -> bool:
    """True when base's history is a single parentless commit (an imported tarball)."""
    res = gitutil.git(None, "rev-list", "--max-count=2", base, cwd=worktree)
    return res.ok and len(res.stdout.split()) == 1


def gate_fixes(mails: list[Mail], worktree: Path, base: str) -> GateResult:
    errors: list[str] = []
    warnings: list[str] = []
    count = 0
    for m in mails:
        for line in m.message:
            fm = FIXES_RE.match(line.strip())
            if not fm:
                continue
            count += 1
            sha, rest = fm["sha"], (fm["rest"] or "").strip()
            tag = f"{m.path.name}: 'Fixes: {sha}'"
            if not re.fullmatch(r"[0-9a-fA-F]{12,40}", sha):
                errors.append(f"{tag}: the commit id needs at least 12 hex digits (git log -1 --abbrev=12 --format='Fixes: %h (\"%s\")')")
                continue
            full = gitutil.git(None, "rev-parse", "--verify", "-q", f"{sha}^{{commit}}", cwd=worktree)
            if not full.ok:
                if _snapshot(worktree, base):
                    # A tarball import has no history to look in: check the form only.
                    if not re.fullmatch(r'\("(?P<s>.+)"\)', rest):
                        errors.append(f"{tag}: write the subject as Fixes: {sha[:12]} (\"<subject>\")")
                    warnings.append(f"{tag}: cannot be verified here: the base is a snapshot without "
                                    "history (a tarball import); check it against upstream")
                    continue
                errors.append(f"{tag}: no such commit in the tree")
                continue
            full_sha = full.stdout.strip()
            anc = gitutil.git(None, "merge-base", "--is-ancestor", full_sha, base, cwd=worktree)
            if anc.returncode != 0:
                errors.append(f"{tag}: commit {full_sha[:12]} is not in the history under the series (base {base[:12]})")
                continue
            real = gitutil.git(None, "log", "-1", "--format=%s", full_sha, cwd=worktree).stdout.strip()
            sm = re.fullmatch(r'\("(?P<s>.*)"\)', rest)
            if not sm:
                errors.append(f"{tag}: write the subject as Fixes: {sha[:12]} (\"{real}\")")
            elif sm["s"] != real:
                errors.append(f"{tag}: subject (\"{sm['s']}\") does not match the commit's (\"{real}\")")
    note = "" if count else "no Fixes: tags"
    return _finish("fixes", errors, warnings, note)


def gate_subject(mails: list[Mail], kind: str) -> GateResult:
    errors: list[str] = []
    warnings: list[str] = []
    limit = SUBJECT_MAX.get(kind, 75)
    for m in mails:
        s = m.summary
        if len(s) > limit:
            errors.append(f"{m.path.name}: summary is {len(s)} characters, {kind} wants at most {limit}: '{s}'")
        if not SUBJECT_RE.match(s):
            errors.append(f"{m.path.name}: summary has no 'subsystem: ' prefix: '{s}'")
        if s.endswith("."):
            warnings.append(f"{m.path.name}: summary ends with a full stop")
    return _finish("subject", errors, warnings, f"summary <= {limit} characters, 'subsystem: summary'")


def _format_range(worktree: Path, base: str, outdir: Path) -> list[Path]:
    res = gitutil.git(None, "format-patch", "--no-signature", "-o", str(outdir), f"{base}..HEAD",
                      cwd=worktree)
    if not res.ok:
        raise UsageError(f"git format-patch {base[:12]}..HEAD failed in {worktree}: {res.stderr.strip()[:200]}")
    return sorted(outdir.glob("*.patch"))


def run_gates(ws, series, worktree: Path, base: str, tree_kind: str, *,
              patches: list[Path] | None = None, log: Path | None = None, sender: str | None = None,
              backports: dict | None = None, subject_prefix: str = "",
              to: list[str] | None = None) -> list[GateResult]:
    """Run every gate on the series' patches in worktree; base is the commit
    under the series' own patches (its depends included).

    patches: the mail files to judge (without the cover letter); by default
    the commits base..HEAD of the worktree, formatted afresh. sender: who
    sends them ("Name <addr>"). backports: mail file name -> series.Backport;
    subject_prefix and to: the thread's, for the stable form.
    """
    worktree = Path(worktree)
    with tempfile.TemporaryDirectory(prefix="kpt-gates-") as tmp:
        if patches is None:
            patches = _format_range(worktree, base, Path(tmp))
        patches = [Path(p) for p in patches]
        mails = read_mails(patches)
        return [
            gate_checkpatch(worktree, patches, tree_kind, log=log),
            gate_signoff(mails),
            gate_fixes(mails, worktree, base),
            gate_subject(mails, tree_kind),
            gate_identity(mails, sender),
            gate_backport(mails, backports or {}, tree_kind, sender=sender,
                          subject_prefix=subject_prefix, to=to),
        ]


def failed(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.ok]


def unsendable(results: list[GateResult]) -> list[GateResult]:
    """The failed gates --force does not pass."""
    return [r for r in results if r.unsendable]
