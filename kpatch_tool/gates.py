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

from kpatch_tool import gitutil, proc
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


@dataclass
class GateResult:
    name: str  # checkpatch, signoff, fixes, subject
    status: str  # pass, fail, warn, skip
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "errors": self.errors,
                "warnings": self.warnings, "note": self.note}


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

    @classmethod
    def read(cls, path: Path) -> Mail:
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = " ".join(str(msg.get("Subject", "")).split())
        summary = re.sub(r"^(\[[^\]]*\]\s*)+", "", subject)
        author = email.utils.parseaddr(str(msg.get("From", "")))[1]
        try:
            body = msg.get_content() if not msg.is_multipart() else ""
        except (LookupError, KeyError):
            body = raw.partition(b"\n\n")[2].decode("utf-8", "replace")
        lines = []
        for line in body.splitlines():
            if line.rstrip() == "---" or line.startswith("diff --git "):
                break
            lines.append(line)
        return cls(path, subject, summary, author, lines)


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
              patches: list[Path] | None = None, log: Path | None = None) -> list[GateResult]:
    """Run every gate on the series' patches in worktree; base is the commit
    under the series' own patches (its depends included).

    patches: the mail files to judge (without the cover letter); by default
    the commits base..HEAD of the worktree, formatted afresh.
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
        ]


def failed(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.ok]
