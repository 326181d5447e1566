"""Quilt series as distributions ship them, in and out.

Reading (`kpt series import DIR`) accepts what quilt itself accepts: an order
file naming patches in subfolders, with any file name, `-pN` per line and `#`
comments; patches with mail headers (git format-patch), DEP-3 headers
(Debian's patch tagging guidelines) or no header at all, and plain `diff -u`
output with timestamps.

git mailinfo is not used for quilt patches that are not mails: it takes any
`word: text` first line for a mail header, so a patch whose first line is a
kernel-style subject (`xen-netback: fix the rate limit`) lost that line. Here a
header is a header only when its field is one DEP-3 or mail defines, and no
line of a description is dropped: DEP-3 fields other than the subject and the
author are kept in the commit message as trailers.

Writing (`kpt export --quilt DIR`) makes a DEP-3 quilt folder a Debian
maintainer can drop into `debian/patches`; importing it again gives the same
patches byte for byte.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool.errors import UsageError

ORDER = "series"
# Fields that open a header block. Anything else on a first line
# (`xen-netback: fix ...`) is the description.
DEP3_FIELDS = {"description", "subject", "author", "from", "origin", "bug", "forwarded", "reviewed-by",
               "acked-by", "last-update", "applied-upstream", "date", "signed-off-by"}
MAIL_FIELDS = {"from", "subject", "date", "message-id", "to", "cc", "in-reply-to", "references",
               "mime-version", "content-type", "content-transfer-encoding", "reply-to", "sender",
               "user-agent", "list-id", "delivered-to", "return-path", "received"}
# DEP-3 only: these mark a header block as DEP-3 rather than a mail.
DEP3_ONLY = {"description", "author", "origin", "bug", "forwarded", "last-update", "applied-upstream"}
# Trailers that `kpt export --quilt` puts back into the DEP-3 header. Reviews
# and sign-offs stay in the description: the kernel reads them there.
EXPORT_FIELDS = {"origin", "bug", "forwarded", "last-update", "applied-upstream"}
FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):(?:[ \t]+(.*)|)$")
MBOX_FROM = re.compile(r"^From [0-9a-f]{40} ")
EPOCH_RE = re.compile(r"^(1970-01-01 00:00:00|1969-12-31 \d\d:\d\d:\d\d|Thu Jan  1 00:00:00 1970)")
HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
DEFAULT_DATE = "@1000000000 +0000"  # as apply.COMMITTER_DATE: an import is reproducible


@dataclass
class Entry:
    path: Path
    rel: str
    strip: int
    line: int


@dataclass
class QuiltPatch:
    label: str
    subject: str
    body: str  # the rest of the description and the trailers, without the subject
    author: str
    email: str
    date: str
    diff: bytes
    fields: list[tuple[str, str]] = field(default_factory=list)


def _is_field(line: str) -> tuple[str, str] | None:
    m = FIELD_RE.match(line)
    if not m:
        return None
    key = m.group(1).lower()
    if key in DEP3_FIELDS or key in MAIL_FIELDS or key.startswith(("bug-", "x-")):
        return m.group(1), m.group(2) or ""
    return None


def read_order(folder: Path) -> list[Entry]:
    """The order file as quilt reads it: `name [-pN]` a line, `#` comments."""
    order = folder / ORDER
    try:
        if not order.is_file():
            raise UsageError(f"{order}: not a file (the quilt order file, one patch a line)")
        text = order.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{order}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{order}: cannot read it: {exc.strerror}") from None
    root = folder.resolve()
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = re.split(r"\s#", line, maxsplit=1)[0]
        name, *opts = line.split()
        strip = 1
        for o in opts:
            m = re.fullmatch(r"-p(\d{1,2})", o)
            if m:
                strip = int(m.group(1))
            elif o == "-R":
                raise UsageError(f"{order}:{i}: '{name}': reversed patches (-R) are not supported")
            else:
                raise UsageError(f"{order}:{i}: unknown option '{o}' (quilt knows -pN)")
        if name.startswith("/") or ".." in name.split("/"):
            raise UsageError(f"{order}:{i}: '{name}': outside the quilt folder")
        path = folder / name
        if not path.resolve().is_relative_to(root):
            raise UsageError(f"{order}:{i}: '{name}': outside the quilt folder (a symlink)")
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "no such patch file"
            raise UsageError(f"{order}:{i}: {name}: {what}")
        out.append(Entry(path, name, strip, i))
    if not out:
        raise UsageError(f"{order}: names no patches")
    return out


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Old patches in Latin-1 are common; every byte maps, none is lost.
        return data.decode("latin-1")


def _decode_2047(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (UnicodeDecodeError, LookupError, email.errors.HeaderParseError):
        return value


def _split(lines: list[bytes]) -> tuple[int, int]:
    """(end of the description, start of the diff) as line indexes."""
    text_end = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else b""
        starts_diff = line.startswith(b"diff ") or (line.startswith(b"--- ") and nxt.startswith(b"+++ ")) \
            or (line.startswith(b"*** ") and nxt.startswith(b"--- "))
        if text_end is None and (line.rstrip() == b"---" or line.startswith(b"Index: ")
                                 or re.match(rb"^={20,}$", line) or starts_diff):
            text_end = i
        if starts_diff:
            return text_end, i
    return (text_end if text_end is not None else len(lines)), len(lines)


def _strip_path(label: str, lineno: int, raw: str, strip: int, prefix: str) -> str:
    name, _, stamp = raw.partition("\t")
    name = name.rstrip() if stamp else name
    if name == "/dev/null" or EPOCH_RE.match(stamp.strip()):
        # diff -N writes an absent file as the epoch; git reads /dev/null.
        return "/dev/null"
    if name.startswith('"'):
        return name if strip == 1 else name  # git's own quoting: already a/ b/
    parts = [p for p in name.split("/") if p]
    if len(parts) <= strip:
        raise UsageError(f"{label}:{lineno}: '{name}' has no path left after -p{strip}")
    return prefix + "/".join(parts[strip:])


def normalise_diff(label: str, data: bytes, strip: int, first_line: int) -> bytes:
    """A quilt diff as git apply -p1 reads it: a/ b/ paths, no timestamps."""
    out = []
    lines = data.split(b"\n")
    i, n = 0, len(lines)
    section: int | None = None  # where the last `diff --git` header starts in out
    while i < n:
        line = lines[i]
        if line.startswith(b"@@ "):
            m = HUNK_RE.match(line.decode("utf-8", "replace"))
            out.append(line)
            if not m:
                i += 1
                continue
            old = int(m.group(2) if m.group(2) is not None else 1)
            new = int(m.group(4) if m.group(4) is not None else 1)
            i += 1
            while i < n and (old > 0 or new > 0 or lines[i].startswith(b"\\")):
                c = lines[i][:1]
                if c in (b" ", b""):
                    old, new = old - 1, new - 1
                elif c == b"-":
                    old -= 1
                elif c == b"+":
                    new -= 1
                elif c != b"\\":
                    break
                out.append(lines[i])
                i += 1
            continue
        if line.startswith(b"diff --git "):
            section = len(out)
            out.append(line)
        elif line.startswith(b"Binary files ") and line.rstrip().endswith(b" differ"):
            # diff's note that it left a binary file out: no change in it, and quilt
            # (GNU patch) skips it. So does kpt, with the git header it may follow.
            if section is not None and not any(x.startswith((b"@@ ", b"--- ")) for x in out[section:]):
                del out[section:]
            section = None
        elif line.startswith((b"--- ", b"+++ ")):
            prefix = "a/" if line.startswith(b"---") else "b/"
            raw = line[4:].decode("utf-8", "surrogateescape")
            if raw.startswith(("a/", "b/")) and strip == 1 and "\t" not in raw:
                out.append(line)
            else:
                path = _strip_path(label, first_line + i, raw, strip, prefix)
                out.append(line[:4] + path.encode("utf-8", "surrogateescape"))
        elif line.startswith((b"Index: ", b"diff ", b"Only in ")) or re.match(rb"^={20,}$", line):
            pass  # quilt's and diff -r's headers: git apply has no use for them
        else:
            out.append(line)
        i += 1
    return b"\n".join(_git_names_from_header(out))


def _git_names_from_header(out: list[bytes]) -> list[bytes]:
    """`rename from/to` and `copy from/to` lines named as the section's own paths.

    GNU patch (so quilt and dpkg-source) takes a git diff's file names from its
    `diff --git`/`---`/`+++` lines; a diff spliced from a submodule's (QEMU's
    stable releases) names a renamed file there relative to the submodule, which
    git apply refuses as inconsistent. The section's own names are what patch uses.
    """
    starts = [i for i, line in enumerate(out) if line.startswith(b"diff --git ")] + [len(out)]
    for a, b in zip(starts, starts[1:]):
        section = out[a:b]
        if not any(x.startswith((b"rename from ", b"copy from ")) for x in section):
            continue
        old = next((x[6:] for x in section if x.startswith(b"--- a/")), None)
        new = next((x[6:] for x in section if x.startswith(b"+++ b/")), None)
        if old is None or new is None:
            head = section[0][len(b"diff --git "):]
            if head.startswith(b"a/") and head.count(b" b/") == 1:
                old, new = head[2:].split(b" b/")
        if old is None or new is None:
            continue
        for j in range(a, b):
            for key, name in ((b"rename from ", old), (b"copy from ", old), (b"rename to ", new),
                              (b"copy to ", new)):
                if out[j].startswith(key):
                    out[j] = key + name
    return out


def parse_patch_text(label: str, data: bytes, strip: int = 1) -> QuiltPatch:
    """One quilt patch: its description and its diff."""
    if b"\0" in data:
        raise UsageError(f"{label}: not a patch (binary data)")
    if b"\r\n" in data:
        lineno = data[: data.index(b"\r\n")].count(b"\n") + 1
        raise UsageError(f"{label}:{lineno}: CRLF line endings (convert with dos2unix first)")
    blines = data.split(b"\n")
    text_end, diff_start = _split(blines)
    if diff_start >= len(blines):
        raise UsageError(f"{label}: not a patch (no diff in it)")
    lines = _decode_text(b"\n".join(blines[:text_end])).split("\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and MBOX_FROM.match(lines[i]):
        i += 1
    fields: list[tuple[str, str]] = []
    desc_long: list[str] = []
    while i < len(lines) and lines[i].strip():
        f = _is_field(lines[i])
        if f is None:
            break
        key, value = f
        i += 1
        cont = []
        while i < len(lines) and lines[i][:1] in (" ", "\t") and lines[i].strip():
            cont.append(lines[i])
            i += 1
        if key.lower() == "description":
            # DEP-3: continuation lines are the long description, " ." a blank line.
            desc_long += ["" if c.strip() == "." else c[1:] for c in cont]
        elif cont:
            value = " ".join([value, *(c.strip() for c in cont)]).strip()
        fields.append((key, value))
    rest = lines[i:]
    while rest and not rest[0].strip():
        rest.pop(0)
    while rest and not rest[-1].strip():
        rest.pop()
    get = {}
    for k, v in fields:
        get.setdefault(k.lower(), v)
    subject = get.get("description") if "description" in get else get.get("subject")
    used = {"description", "subject", "author", "from", "date"} | MAIL_FIELDS
    if subject is not None and "description" not in get:
        subject = re.sub(r"^(\[[^\]]*\]\s*)+", "", _decode_2047(subject))
    body_lines = desc_long + ([""] if desc_long and rest else []) + rest
    if not subject or not subject.strip():
        # No subject field: the first line of the text is the subject.
        while body_lines and not body_lines[0].strip():
            body_lines.pop(0)
        if body_lines:
            subject = body_lines.pop(0)
            while body_lines and not body_lines[0].strip():
                body_lines.pop(0)
        else:
            subject = ""
    trailers = [f"{k}: {_decode_2047(v)}" for k, v in fields if k.lower() not in used]
    body = "\n".join(body_lines).rstrip()
    if trailers:
        last = body.rsplit("\n\n", 1)[-1] if body else ""
        joined = last and all(_is_trailer(x) for x in last.split("\n"))
        body = (body + ("\n" if joined else "\n\n") if body else "") + "\n".join(trailers)
    who = _decode_2047(get.get("author") or get.get("from") or "").strip()
    if not who:
        # DEP-3 allows a second set of fields in any later paragraph; the line stays in the text.
        m = re.search(r"(?m)^(?:Author|From):[ \t]*(\S.*?)\s*$", "\n".join(rest))
        who = m.group(1) if m else ""
    name, mail = _person(who)
    diff = normalise_diff(label, b"\n".join(blines[diff_start:]), strip, diff_start + 1)
    return QuiltPatch(label, subject.strip(), body, name, mail, get.get("date", "").strip(), diff, fields)


def _is_trailer(line: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9-]*: \S", line))


PERSON_RE = re.compile(r'^\s*([^<>]*?)\s*<([^<>]*)>\s*$')


def _person(who: str) -> tuple[str, str]:
    """(name, e-mail) of an Author:/From: value.

    One `Name <mail>` is read as it stands: DEP-3 headers write `Lee, Chun-Yi <...>`
    unquoted, which an address-list parser splits at the comma into two people.
    """
    if not who:
        return "", ""
    m = PERSON_RE.match(who)
    if m:
        name = m.group(1)
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r'\\(.)', r'\1', name[1:-1])
        return name.strip(), m.group(2).strip()
    first = email.utils.getaddresses([who])[0] if "<" in who or "@" in who else (who, "")
    name, mail = first
    if not name and mail and "@" not in mail:
        name, mail = mail, ""
    return name.strip(), mail.strip()


def is_mail(data: bytes) -> bool:
    """A git format-patch file (mail headers, nothing DEP-3 only): git mailinfo reads it best."""
    lines = data.split(b"\n", 40)
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and MBOX_FROM.match(lines[i].decode("latin-1")):
        return True
    keys = []
    for raw in lines[i:]:
        line = raw.decode("latin-1")
        if not line.strip():
            break
        if line[:1] in (" ", "\t"):
            continue
        f = _is_field(line)
        if f is None:
            return False
        keys.append(f[0].lower())
    return bool(keys) and "from" in keys and "subject" in keys and not set(keys) & DEP3_ONLY


def read_folder(repo: Path, folder: Path, author: str | None) -> list:
    """The patches of a quilt folder (or a folder of patch files) as commits to make."""
    from kpatch_tool import export  # export imports the importers; this is one

    if (folder / ORDER).exists():
        entries = read_order(folder)
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".patch", ".diff") and p.is_file())
        if not files:
            raise UsageError(f"{folder}: no series file and no *.patch files")
        entries = [Entry(p, p.name, 1, 0) for p in files]
    mails = []
    for e in entries:
        label = str(e.path)
        try:
            data = e.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{label}: cannot read it: {exc.strerror}") from None
        if e.strip == 1 and is_mail(data):
            mails.append(export._mailinfo(repo, e.path, label, author))
            continue
        q = parse_patch_text(label, data, e.strip)
        from kpatch_tool.series import _check_diff

        _check_diff(e.path, q.diff, 1)
        subject = q.subject or re.sub(r"\.(patch|diff)$", "", e.path.name)
        name, mail = q.author, q.email
        if not name and not mail:
            m = re.match(r"^\s*(.+?)\s*<(.*?)>\s*$", author or "")
            if author and not m:
                raise UsageError(f"--author '{author}': expected 'Name <email>'")
            if not m:
                raise UsageError(f"{label}: no author (no Author: or From: field); pass --author 'Name <email>'")
            name, mail = m.group(1), m.group(2)
        mails.append(export._Mail(label, name or mail, mail, q.date or DEFAULT_DATE, subject,
                                  q.body + "\n" if q.body else "", q.diff))
    return mails


# --------------------------------------------------------------------------
# export


def _stored_parts(path: Path) -> tuple[str, str, str, str, str]:
    """(author, date, subject, message body, diff) of a stored format-patch file."""
    data = path.read_bytes()
    head, _, rest = data.partition(b"\n\n")
    msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.default)
    subject = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(msg.get("Subject", "")).split()))
    author = " ".join(str(msg.get("From", "")).split())
    date = str(msg.get("Date", ""))
    text = rest.decode("utf-8")
    at = text.find("\ndiff --git ")
    diff = text[at + 1:] if at >= 0 else ""
    desc = text[: at + 1] if at >= 0 else text
    # Below the `---` line: diffstat and notes, which format-patch makes again.
    m = re.search(r"(?m)^---$", desc)
    if m:
        desc = desc[: m.start()]
    return author, date, subject, desc.strip("\n"), diff


def _export_field(key: str) -> bool:
    return key.lower() in EXPORT_FIELDS or key.lower().startswith("bug-")


def _dep3_text(author: str, date: str, subject: str, body: str, diff: str) -> str:
    paras = body.split("\n\n") if body else []
    moved: list[str] = []
    if paras:
        last = paras[-1].split("\n")
        while last and _is_trailer(last[-1]) and _export_field(last[-1].split(":", 1)[0]):
            moved.insert(0, last.pop())
        # Move them only where import puts them back: appended to a trailer
        # paragraph, or as a paragraph of their own after prose.
        if moved and last and all(_is_trailer(x) for x in last):
            paras[-1] = "\n".join(last)
        elif moved and not last and not (len(paras) > 1 and all(_is_trailer(x) for x in paras[-2].split("\n"))):
            paras.pop()
        else:
            moved = []
    head = [f"Description: {subject}"]
    if author:
        name, mail = email.utils.parseaddr(author)
        if re.search(r'[,;:"()<>@\[\]\\]', name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        head.append(f"Author: {name} <{mail}>" if mail else f"Author: {name or author}")
    if date and not _is_default_date(date):
        head.append(f"Date: {date}")
    head += moved
    text = "\n".join(head) + "\n"
    if paras:
        text += "\n" + "\n\n".join(paras) + "\n"
    return text + "---\n" + diff


def _is_default_date(date: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() == 1000000000
    except (TypeError, ValueError):
        return False


def export_quilt(patch_files: list[Path], dest: Path, header: str = "") -> list[str]:
    """Write the patches as a DEP-3 quilt folder (series + one file a patch).

    Written aside and renamed into place, so a failure (full disk, a
    read-only folder) leaves dest as it was.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        if not (dest / ORDER).is_file():
            raise UsageError(f"{dest}: a folder with other files and no quilt order file; give an empty or new folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    except OSError as exc:
        raise UsageError(f"{dest}: cannot write there: {exc.strerror}") from None
    names = []
    try:
        for p in patch_files:
            author, date, subject, body, diff = _stored_parts(p)
            (tmp / p.name).write_text(_dep3_text(author, date, subject, body, diff), encoding="utf-8")
            names.append(p.name)
        (tmp / ORDER).write_text(header + "".join(n + "\n" for n in names), encoding="utf-8")
        if dest.is_dir():
            for p in dest.iterdir():  # a maintainer's other patches stay
                if not (tmp / p.name).exists() and p.name != ORDER:
                    os.replace(p, tmp / p.name)
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, trash / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except OSError as exc:
        raise UsageError(f"{dest}: cannot write the quilt folder: {exc.strerror}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return names
