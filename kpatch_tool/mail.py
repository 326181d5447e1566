"""Mail a series: one thread per tree, as git format-patch writes them.

The series is applied first (apply.apply_series: a worktree whose branch holds
base..head, the depends' patches under the series' own), then, per tree,
`git format-patch --cover-letter --thread=shallow --base` formats the series'
own commits: the depends' patches become `prerequisite-patch-id:` lines. The
mails are then finished the way a maintainer's tools read them:

- Message-Ids are fixed, `<kpt.<series>.v<N>.<tree>.<k>@<domain>>` (k=0 for
  the cover), so a rerun writes the same bytes, b4 can read the local mbox
  (it needs Message-Id headers), the next version's cover can link this one on
  lore, and QEMU's `Based-on:` can name a dependency's thread.
- The cover letter is rendered from kpatch_tool/templates/cover-letter.j2: cover.md's
  title and body, the changelog of series.toml with links to earlier
  versions, the companion threads on other lists for a series spanning
  trees, shortlog, diffstat, a range-diff against the tag of the previous
  version, and the base information git wrote.
- To/Cc per patch come from the tree's get_maintainer.pl (maintainers.py); the
  cover letter gets the union.
- The gates (gates.py) judge the patch mails before anything goes out. A
  placeholder identity (the hard identity gate) makes the whole thread a
  preview: still written, every mail marked `X-Kpt-Not-Sendable`, never sent.

Output: one file per mail plus mboxrd mboxes per tree (the patches, which
git am applies, and the whole thread), under
`<out>/<tree>/` (default `out/mail/<series>-v<N>/<tree>/`). Sending them
is mailsend.py's job, and only on an explicit request.
"""

from __future__ import annotations

import email
import email.header
import json
import email.policy
import email.utils
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from kpatch_tool import gates as gatesmod
from kpatch_tool import gitutil, maintainers, proc, templating
from kpatch_tool.errors import UsageError
from kpatch_tool.series import Series, load_series, update_toml
from kpatch_tool.workspace import Workspace

MAIL_MANIFEST = ".kpt-mail.json"  # the files kpt wrote in a mail folder: the only ones it replaces

TEMPLATE = "cover-letter.j2"
PLACEHOLDER_BODY = "What this series does and why."  # what `kpt series new` writes
LORE = "https://lore.kernel.org/r/{}"
MAIL_HEADERS_FIRST = ("Message-Id", "In-Reply-To", "References")
# The mark of a preview: mails whose identities no list accepts (gates.gate_identity).
NOT_SENDABLE = "X-Kpt-Not-Sendable"
NOT_SENDABLE_VALUE = "a preview: a placeholder identity signs or sends it (kpt series signoff NAME --author)"


# --------------------------------------------------------------------------
# results


@dataclass
class TreeMail:
    tree: str
    kind: str
    out_dir: Path
    files: list[Path]  # cover letter first, then the patches in order
    mbox: Path  # the patches (git am applies it on the base; b4 reads it)
    thread_mbox: Path  # the whole thread as it goes out, cover letter first
    cover: Path
    subject: str  # the cover letter's
    message_id: str  # the cover letter's (thread root)
    recipients: maintainers.Recipients  # the cover letter's (the union)
    per_patch: dict[str, maintainers.Recipients]
    gates: list[gatesmod.GateResult]
    base_commit: str
    series_base: str
    head_commit: str
    worktree: Path
    prerequisites: list[str] = field(default_factory=list)
    range_diff: str | None = None

    @property
    def patches(self) -> list[Path]:
        return self.files[1:]

    @property
    def blocked(self) -> bool:
        return any(not g.ok for g in self.gates)

    @property
    def unsendable(self) -> bool:
        """A hard gate failed (a placeholder identity): written as a preview, never sent."""
        return any(g.unsendable for g in self.gates)


@dataclass
class MailResult:
    series: str
    version: int
    out: Path
    trees: dict[str, TreeMail] = field(default_factory=dict)
    forced: bool = False  # prepared with force=True: sending goes ahead despite failed gates
    sender: str = ""  # "Name <addr>": the covers' From, and the From every mail goes out with

    @property
    def blocked(self) -> bool:
        return any(t.blocked for t in self.trees.values())

    @property
    def unsendable(self) -> bool:
        return any(t.unsendable for t in self.trees.values())

    def unsendable_gates(self) -> list[tuple[str, gatesmod.GateResult]]:
        return [(t.tree, g) for t in self.trees.values() for g in t.gates if g.unsendable]

    def failed_gates(self) -> list[tuple[str, gatesmod.GateResult]]:
        return [(t.tree, g) for t in self.trees.values() for g in t.gates if not g.ok]

    def to_dict(self) -> dict:
        return {"series": self.series, "version": self.version, "out": str(self.out),
                "sendable": not self.unsendable,
                "trees": {n: {"files": [str(f) for f in t.files], "mbox": str(t.mbox),
                              "thread_mbox": str(t.thread_mbox),
                              "cover": str(t.cover), "subject": t.subject,
                              "message_id": t.message_id,
                              "recipients": t.recipients.to_dict(),
                              "gates": [g.to_dict() for g in t.gates],
                              "base_commit": t.base_commit,
                              "prerequisites": t.prerequisites}
                          for n, t in self.trees.items()}}


# --------------------------------------------------------------------------
# small helpers


def tag_name(name: str, version: int) -> str:
    return f"kpt/{name}/v{version}"


def message_id(name: str, version: int, tree: str, k: int, domain: str) -> str:
    return f"<kpt.{name}.v{version}.{tree}.{k}@{domain}>"


def _wt(wt: Path, *args, **kw):
    return gitutil.git(None, *args, cwd=wt, **kw)


def sender(worktree: Path, fallback: str) -> str:
    """The user's identity as git send-email would use it ("Name <addr>")."""
    # The user's own config and environment count here (gitutil hides them).
    res = proc.run(["git", "var", "GIT_AUTHOR_IDENT"], cwd=worktree, timeout=30)
    if res.ok:
        m = re.match(r"^(.*<[^>]*>)", res.stdout.strip())
        if m and "@" in m.group(1):
            return m.group(1)
    return fallback


def _domain(addr: str) -> str:
    a = email.utils.parseaddr(addr)[1]
    return a.rsplit("@", 1)[1] if "@" in a else "localhost"


def _fold_addrs(name: str, addrs: list[str]) -> str:
    enc = []
    for a in addrs:
        n, e = email.utils.parseaddr(a)
        enc.append(email.utils.formataddr((n, e), charset="utf-8") if e else a)
    return f"{name}: " + ",\n ".join(enc)


def _encode_subject(subject: str) -> str:
    if subject.isascii():
        return subject
    return email.header.Header(subject, "utf-8", header_name="Subject").encode()


def split_mail(text: str) -> tuple[str, list[list[str]], str]:
    """(mbox From_ line, header fields as line groups, body) of a format-patch file."""
    first, _, rest = text.partition("\n")
    head, _, body = rest.partition("\n\n")
    fields: list[list[str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return first, fields, body


def join_mail(first: str, fields: list[list[str]], body: str) -> str:
    return first + "\n" + "\n".join("\n".join(f) for f in fields) + "\n\n" + body


def _field_name(f: list[str]) -> str:
    return f[0].split(":", 1)[0].strip().lower()


def set_headers(text: str, values: dict[str, str | None]) -> str:
    """Replace, add or (value None) drop header fields; new ones go first
    (Message-Id and threading) or after Subject (To, Cc and the rest)."""
    first, fields, body = split_mail(text)
    lower = {k.lower(): k for k in values}
    kept = [f for f in fields if _field_name(f) not in lower]
    top = [[f"{k}: {v}"] for k, v in values.items() if v is not None and k in MAIL_HEADERS_FIRST]
    rest = [v.split("\n") if v.startswith(f"{k}:") else [f"{k}: {v}"]
            for k, v in values.items() if v is not None and k not in MAIL_HEADERS_FIRST]
    at = next((i + 1 for i, f in enumerate(kept) if _field_name(f) == "subject"), len(kept))
    fields = top + kept[:at] + rest + kept[at:]
    return join_mail(first, fields, body)


def header(text: str, name: str) -> str | None:
    _, fields, _ = split_mail(text)
    for f in fields:
        if _field_name(f) == name.lower():
            return " ".join(l.strip() for l in f).split(":", 1)[1].strip()
    return None


def mboxrd(texts: list[str]) -> str:
    """Concatenate format-patch files into an mboxrd mailbox (b4's format)."""
    out = []
    for t in texts:
        first, _, rest = t.partition("\n")
        rest = re.sub(r"(?m)^(>*From )", r">\1", rest)
        if not rest.endswith("\n"):
            rest += "\n"
        out.append(first + "\n" + rest + "\n")
    return "".join(out)


# --------------------------------------------------------------------------
# the previous version, for range-diff and links


def previous_tag(repo: Path, name: str, version: int) -> tuple[str, str | None] | None:
    """(tagged head, series base recorded in the tag) of version, or None."""
    ref = f"refs/tags/{tag_name(name, version)}"
    head = gitutil.rev(repo, ref)
    if not head:
        return None
    msg = gitutil.git(repo, "cat-file", "-p", ref).stdout
    m = re.search(r"(?m)^series-base: ([0-9a-f]{40})$", msg)
    return head, (m.group(1) if m else None)


def tagged_versions(repo: Path, name: str) -> list[int]:
    res = gitutil.git(repo, "for-each-ref", "--format=%(refname)", f"refs/tags/kpt/{name}/")
    out = []
    for ref in (res.stdout.splitlines() if res.ok else []):
        m = re.fullmatch(rf"refs/tags/kpt/{re.escape(name)}/v(\d+)", ref.strip())
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def range_diff(wt: Path, prev: tuple[str, str | None], series_base: str, head: str) -> str:
    prev_head, prev_base = prev
    if prev_base:
        args = [f"{prev_base}..{prev_head}", f"{series_base}..{head}"]
    else:  # a tag made by hand: compare both against the current base
        args = [series_base, prev_head, head]
    res = _wt(wt, "range-diff", "--no-color", *args)
    if not res.ok:
        raise UsageError(f"git range-diff {' '.join(args)} failed in {wt}: {res.stderr.strip()[:200]}")
    return res.stdout.rstrip("\n")


# --------------------------------------------------------------------------
# formatting one tree


@dataclass
class _Part:
    tree: str
    kind: str
    st: object  # SeriesTree
    ar: object  # ApplyResult
    texts: list[str]  # cover first (git's, unrendered), then patches
    names: list[str]
    total: int
    prerequisites: list[str] = field(default_factory=list)
    base_lines: list[str] = field(default_factory=list)
    per_patch: dict = field(default_factory=dict)
    cover_rec: maintainers.Recipients | None = None
    gates: list = field(default_factory=list)
    subject: str = ""
    range_diff: str | None = None
    files: list[Path] = field(default_factory=list)  # as formatted (cover first), for the gates
    backports: dict = field(default_factory=dict)  # mail file name -> series.Backport
    log: Path | None = None


def _format(wt: Path, series: Series, st, version: int, base: str, series_base: str,
            head: str, outdir: Path) -> list[Path]:
    args = ["format-patch", "--cover-letter", "--thread=shallow", "--no-signature", "--no-to",
            "--no-cc", "--no-notes", "--no-attach", "--numbered",
            f"--subject-prefix={st.subject_prefix}", f"--base={base}", "-o", str(outdir)]
    if version > 1:
        args.append(f"--reroll-count={version}")
    res = _wt(wt, "-c", "format.useAutoBase=false", "-c", "format.encodeEmailHeaders=true",
              *args, f"{series_base}..{head}")
    if not res.ok:
        raise UsageError(f"git format-patch failed in {wt}: {res.stderr.strip()[:300]}")
    return sorted(outdir.glob("*.patch"))


def _insert_changes(text: str, changes: str) -> str:
    """Put a per-patch changelog right below the `---` line (git am drops it)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line == "---":
            block = changes.strip("\n").split("\n") + [""]
            return "\n".join(lines[: i + 1] + block + lines[i + 1:])
    return text


def _own_patches(series: Series, st, ar) -> list:
    return [p for p in ar.applied if Path(p.path).parent == st.folder]


def _cover_body(ws: Workspace, series: Series, part: _Part, version: int, *, sender_: str,
                companions: list[dict], based_on: list[str], links: dict[int, str]) -> str:
    wt = part.ar.worktree
    sb, head = part.ar.series_base, part.ar.head_commit
    shortlog = _wt(wt, "shortlog", "--no-merges", "-w72,2,4", f"{sb}..{head}").stdout.strip("\n")
    diffstat = _wt(wt, "diff", "--stat=72", "--summary", sb, head).stdout.rstrip("\n")
    changes = []
    for v in sorted((v for v in series.changelog if 1 < v <= version), reverse=True):
        changes.append({"version": v, "text": series.changelog[v].strip("\n"), "link": links.get(v - 1)})
    return templating.render(TEMPLATE,
        title=series.cover_title, body=series.cover_body.strip("\n"), version=version,
        changes=changes, companions=companions, based_on=based_on, shortlog=shortlog,
        diffstat=diffstat, range_diff=part.range_diff, base_lines=part.base_lines,
        sender=sender_, series=series.name, tree=part.tree)


def _check_cover(series: Series) -> None:
    body = series.cover_body.strip()
    if not body or body == PLACEHOLDER_BODY:
        raise UsageError(
            f"series '{series.name}': no cover letter text in {series.path / 'cover.md'} "
            f"(first line the title, then what the series does and why)")
    if not series.cover_title.strip():
        raise UsageError(f"series '{series.name}': {series.path / 'cover.md'} has no title line")


def prepare(ws: Workspace, name: str, *, version: int | None = None, out: Path | None = None,
            force: bool = False, progress: Callable[[str], None] | None = None,
            tree: str | None = None, range_diff_: bool = True) -> MailResult:
    """Write the mails of series `name` (one thread per tree) and run the gates.

    Nothing is sent. The result says per tree which files, mbox and
    recipients were written and how each gate went; `result.blocked` is true
    when a gate failed, and sending then refuses unless force was given.
    """

    say = progress or (lambda m: None)
    series = load_series(ws, name)
    _check_cover(series)
    version = version or series.version
    trees = [series.tree(tree).name] if tree else list(series.trees)
    if not trees:
        raise UsageError(f"series '{name}' has no trees ({series.toml_path})")
    out = Path(out) if out else ws.out_dir / "mail" / f"{name}-v{version}"
    result = MailResult(name, version, out, forced=force)
    parts: dict[str, _Part] = {}
    skipped: list[str] = []

    with tempfile.TemporaryDirectory(prefix="kpt-mail-") as tmp:
        for t in trees:
            part = _prepare_tree(ws, series, t, version, Path(tmp), out, say, only=bool(tree),
                                 range_diff_=range_diff_)
            if part is None:
                skipped.append(t)
            else:
                parts[t] = part

        if not parts:
            raise UsageError(f"series '{name}': nothing to mail: no tree has patches of its own "
                             f"({', '.join(skipped)})")
        # Second pass: ids, headers and cover letters (they name each other).
        first_author = next(iter(parts.values())).texts[1]
        fallback = header(first_author, "From") or "kpt <kpt@localhost>"
        me = sender(next(iter(parts.values())).ar.worktree, fallback)
        result.sender = me
        for part in parts.values():
            _gate(ws, series, part, me, say)
        domain = _domain(me)
        others = _companions(ws, series, parts, skipped, version)
        for t, part in parts.items():
            result.trees[t] = _finish_tree(ws, series, part, parts, version, me, domain, out / t, others)
    return result


def _prepare_tree(ws: Workspace, series: Series, t: str, version: int, tmp: Path, out: Path,
                  say: Callable[[str], None], *, only: bool, range_diff_: bool) -> _Part | None:
    """One tree's thread: applied, formatted, gated, addressed (None: no patches of its own there)."""
    from kpatch_tool import apply as applymod

    name = series.name
    st = series.trees[t]
    kind = ws.tree(t).kind
    say(f"{t}: applying {name} v{series.version}")
    ar = applymod.apply_series(ws, name, tree=t,
                               progress=lambda m, i, n, t=t: say(f"{t}: {m}"), say=say)
    wt = ar.worktree
    count = int(_wt(wt, "rev-list", "--count", f"{ar.series_base}..{ar.head_commit}",
                    check=True).stdout.strip())
    if count == 0:
        if only:
            raise UsageError(f"series '{name}': nothing to mail for tree '{t}' "
                             f"(no patches, or all already in {ar.base_commit[:12]})")
        # A series may carry only records for a tree (vring-dma-api's Linux side is
        # upstream): no thread for it, the others go out.
        say(f"{t}: no patches of {name}'s own; no thread for this tree")
        return None
    d = tmp / t
    d.mkdir()
    files = _format(wt, series, st, version, ar.base_commit, ar.series_base, ar.head_commit, d)
    texts = [f.read_text(encoding="utf-8") for f in files]
    part = _Part(t, kind, st, ar, texts, [f.name for f in files], count)
    # Per-patch changes (below ---) from an optional <patch>.changes file.
    own = _own_patches(series, st, ar)
    if len(own) == count:
        for i, p in enumerate(own, 1):
            side = Path(p.path).with_suffix(".changes")
            if side.is_file():
                part.texts[i] = _insert_changes(part.texts[i], side.read_text(encoding="utf-8"))
    cover_text = texts[0]
    _, _, cbody = split_mail(cover_text)
    part.base_lines = [l for l in cbody.splitlines()
                       if l.startswith(("base-commit:", "prerequisite-patch-id:"))]
    part.prerequisites = [l.split(":", 1)[1].strip() for l in part.base_lines
                          if l.startswith("prerequisite-patch-id:")]
    part.subject = " ".join((header(cover_text, "Subject") or "").split()).replace(
        "*** SUBJECT HERE ***", series.cover_title.strip())
    # Gates read the patch mails as they will go out (run once the sender is known: _gate).
    for i in range(1, len(files)):
        files[i].write_text(part.texts[i], encoding="utf-8")
    part.files = files
    if len(own) == count:
        part.backports = {files[i].name: bp for i, p in enumerate(own, 1)
                          if (bp := series.backport(t, p.file))}
    elif any(b.tree == t for b in series.backports):
        raise UsageError(f"series '{name}': tree '{t}' formats {count} patches but its order file lists "
                         f"{len(own)}: the [[backport]] declarations cannot be matched to the mails")
    log = out / t / "mail.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    part.log = log
    say(f"{t}: recipients (get_maintainer.pl)")
    part.per_patch, part.cover_rec = maintainers.for_series(
        wt, files[1:], kind, to=st.to, cc=st.cc, mlist=st.list, log=log, say=say)
    if version > 1 and range_diff_:
        prev = previous_tag(_repo_of(wt), name, version - 1)
        if prev is None:
            raise UsageError(
                f"series '{name}' v{version}: no tag {tag_name(name, version - 1)} in tree '{t}' "
                f"for the range-diff against v{version - 1} (`kpt mail {name} --reroll` tags what "
                f"was sent; or mail with --no-range-diff)")
        part.range_diff = range_diff(wt, prev, ar.series_base, ar.head_commit)
    return part


def _gate(ws: Workspace, series: Series, part: _Part, me: str, say: Callable[[str], None]) -> None:
    say(f"{part.tree}: gates (checkpatch, signoff, fixes, subject, identity, backport)")
    rec = part.cover_rec
    part.gates = gatesmod.run_gates(ws, series, part.ar.worktree, part.ar.series_base, part.kind,
                                    patches=part.files[1:], log=part.log, sender=me,
                                    backports=part.backports, subject_prefix=part.st.subject_prefix,
                                    to=list(rec.to) if rec else [])


def _companions(ws: Workspace, series: Series, parts: dict, skipped: list[str], version: int) -> dict:
    # Trees left out with --tree still get named as companions, from
    # series.toml (their lists as far as it and the project tell).
    others = {}
    for ot, ost in series.trees.items():
        if ot in parts or ot in skipped or not ost.patches:
            continue
        v = f" v{version}" if version > 1 else ""
        lists = [x for x in (ost.list, maintainers.PROJECT_LIST.get(ws.tree(ot).kind)) if x]
        others[ot] = {"subject": f"[{ost.subject_prefix}{v} 0/{len(ost.patches)}] {series.cover_title.strip()}",
                      "lists": lists or list(ost.to[:1])}
    return others


def _repo_of(wt: Path) -> Path:
    res = _wt(wt, "rev-parse", "--git-common-dir", check=True)
    p = Path(res.stdout.strip())
    return p if p.is_absolute() else (wt / p).resolve()


def _lists_of(part: _Part) -> list[str]:
    lists = list(part.cover_rec.lists) if part.cover_rec else []
    return lists or (part.cover_rec.to[:1] if part.cover_rec else [])


def _addressed(texts: list[str], recs: list, ids: list[str], preview: str | None) -> list[str]:
    """The mails with their ids, threading, To/Cc and (a preview) the not-sendable mark."""
    final = []
    for k, (text, rec) in enumerate(zip(texts, recs)):
        vals: dict[str, str | None] = {"Message-Id": ids[k],
                                       "In-Reply-To": ids[0] if k else None,
                                       "References": ids[0] if k else None}
        vals[NOT_SENDABLE] = preview
        vals["To"] = _fold_addrs("To", rec.to) if rec.to else None
        vals["Cc"] = _fold_addrs("Cc", rec.cc) if rec.cc else None
        final.append(set_headers(text, vals))
    return final


def _finish_tree(ws: Workspace, series: Series, part: _Part, parts: dict[str, _Part], version: int,
                 me: str, domain: str, outdir: Path, others: dict | None = None) -> TreeMail:
    name, t = series.name, part.tree
    ids = [message_id(name, version, t, k, domain) for k in range(len(part.texts))]
    companions = [{"subject": o.subject, "lists": _lists_of(o),
                   "link": LORE.format(message_id(name, version, o.tree, 0, domain)[1:-1])}
                  for ot, o in parts.items() if ot != t]
    companions += [{**o, "link": LORE.format(message_id(name, version, ot, 0, domain)[1:-1])}
                   for ot, o in (others or {}).items()]
    based_on = []
    if part.kind == "qemu":
        from kpatch_tool.series import load_series as _load
        for dep in series.depends:
            ds = _load(ws, dep)
            if t in ds.trees:
                based_on.append(message_id(dep, ds.version, t, 0, domain))
    repo = _repo_of(part.ar.worktree)
    links = {}
    # One listing of the tags that exist, not one lookup per earlier version:
    # version = 10**12 in series.toml must not mean 10**12 git processes.
    for v in tagged_versions(repo, name):
        if v < version:
            links[v] = LORE.format(message_id(name, v, t, 0, domain)[1:-1])
    body = _cover_body(ws, series, part, version, sender_=me, companions=companions,
                       based_on=based_on, links=links)
    # The cover: git's headers, our subject, body and identity; dated like the
    # newest patch so that a rerun writes the same bytes.
    dates = [email.utils.parsedate_to_datetime(header(x, "Date")) for x in part.texts[1:] if header(x, "Date")]
    cover = part.texts[0]
    first, _, _ = split_mail(cover)
    cover_vals = {"From": _fold_addrs("From", [me])[6:],
                  "Date": email.utils.format_datetime(max(dates)) if dates else header(cover, "Date"),
                  "Subject": _encode_subject(part.subject)}
    _, fields, _ = split_mail(cover)
    fields = [f for f in fields if _field_name(f) not in {"from", "date", "subject", "message-id",
                                                          "in-reply-to", "references"}]
    cover = join_mail(first, [[f"{k}: {v}"] for k, v in cover_vals.items()] + fields, body)
    if not body.isascii():
        cover = set_headers(cover, {"MIME-Version": "1.0", "Content-Type": "text/plain; charset=UTF-8",
                                    "Content-Transfer-Encoding": "8bit"})
    texts = [cover] + part.texts[1:]
    recs = [part.cover_rec] + [part.per_patch[n] for n in part.names[1:]]
    # A placeholder identity (the hard identity gate): the files are a preview, marked in every
    # mail; mailsend refuses a mail that carries the mark.
    preview = NOT_SENDABLE_VALUE if any(g.unsendable for g in part.gates) else None
    final = _addressed(texts, recs, ids, preview)

    # Replace what an earlier run wrote here, and nothing else: `--out` may name a folder
    # of the user's, so only the files kpt's own list (MAIL_MANIFEST) names are removed.
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = outdir / MAIL_MANIFEST
    try:
        earlier = json.loads(manifest.read_text())
    except (OSError, ValueError):
        earlier = []
    mbox = outdir / f"{name}-v{version}-{t}.mbox"
    thread = outdir / f"{name}-v{version}-{t}.thread.mbox"
    mine = [*part.names, mbox.name, thread.name]
    for fname in earlier if isinstance(earlier, list) else []:
        if isinstance(fname, str) and "/" not in fname and fname not in mine and fname.endswith((".patch", ".mbox")):
            (outdir / fname).unlink(missing_ok=True)
    manifest.write_text(json.dumps(mine, indent=1))
    paths = []
    for fname, text in zip(part.names, final):
        p = outdir / fname
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    # git am stops at a cover letter ("Patch is empty"), so the mbox to apply
    # holds the patches only; the thread mbox is what the list will archive.
    mbox.write_text(mboxrd(final[1:]), encoding="utf-8")
    thread.write_text(mboxrd(final), encoding="utf-8")
    return TreeMail(t, part.kind, outdir, paths, mbox, thread, paths[0], part.subject, ids[0], part.cover_rec,
                    {n: part.per_patch[n] for n in part.names[1:]}, part.gates, part.ar.base_commit,
                    part.ar.series_base, part.ar.head_commit, part.ar.worktree, part.prerequisites,
                    part.range_diff)


# --------------------------------------------------------------------------
# versions


@dataclass
class RerollResult:
    series: str
    sent: int  # the version tagged
    next: int  # the version series.toml now has
    tags: dict[str, str] = field(default_factory=dict)  # tree -> tagged commit


def reroll(ws: Workspace, name: str, *, progress: Callable[[str], None] | None = None) -> RerollResult:
    """Tag what was sent (kpt/<name>/vN on the applied head, per tree), then
    bump series.toml to vN+1 with a changelog stub for the new version."""
    from kpatch_tool import apply as applymod

    say = progress or (lambda m: None)
    series = load_series(ws, name)
    n = series.version
    res = RerollResult(name, n, n + 1)
    for t in series.trees:
        ar = applymod.apply_series(ws, name, tree=t, say=say)
        repo = _repo_of(ar.worktree)
        ref = f"refs/tags/{tag_name(name, n)}"
        have = gitutil.rev(repo, ref)
        if have and have != ar.head_commit:
            raise UsageError(f"tree '{t}': tag {tag_name(name, n)} already exists at {have[:12]}, "
                             f"not at the applied head {ar.head_commit[:12]} (v{n} was tagged before; "
                             f"delete the tag to retag)")
        if not have:
            msg = (f"kpt: {name} v{n} as mailed\n\nseries-base: {ar.series_base}\n"
                   f"base-commit: {ar.base_commit}\n")
            gitutil.git(repo, "tag", "-a", "-m", msg, tag_name(name, n), ar.head_commit, check=True)
            say(f"{t}: tagged {tag_name(name, n)} at {ar.head_commit[:12]}")
        res.tags[t] = ar.head_commit
    stub = {} if (n + 1) in series.changelog else {n + 1: f"- TODO: what changed since v{n}"}
    update_toml(series, version=n + 1, changelog=stub)
    return res
