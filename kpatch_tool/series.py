"""The series store: `patches/<name>/` as models, loaded and validated.

A series folder holds series.toml (what the series is), cover.md (the cover
letter's title and body) and, per tree it touches, a quilt-compatible
`<tree>/series` order file naming `NNNN-<slug>.patch` files in normalised
`git format-patch` form (see export.py for the normal form).

Loading checks everything a later stage would trip over (unknown keys and
trees, missing or malformed patch files, dependency cycles) and names the
file, and the line or key, at fault: a broken series is reported before any
worktree, build or boot is started.
"""

from __future__ import annotations

import builtins
import email
import email.errors
import email.policy
import email.utils
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
import tomlkit
import tomlkit.exceptions

from kpatch_tool import gitutil, safefs
from kpatch_tool.errors import UsageError
from kpatch_tool.userfile import read_bytes, read_text
from kpatch_tool.modes import MODES, PLACES
from kpatch_tool.workspace import NAME_RE, NAME_RULE, Workspace, valid_name  # noqa: F401 (NAME_RE: re-export)

SERIES_TOML = "series.toml"
COVER = "cover.md"
ORDER = "series"
SMOKE_WHERE = PLACES
TOP_KEYS = {"name", "version", "summary", "depends", "trees", "changelog", "smoke", "fragments", "upstream",
            "domU", "ci", "backport"}
# [domU]: how the nested run's domU is made (nested.domu_settings merges them along the depends chain).
DOMU_KEYS = {"memory": int, "vcpus": int, "vif_options": str, "extra_config": list, "extra": str,
             "device_model_args": list, "device_model_setup": str, "virtio": list}
# [ci]: how `kpt ci SERIES` boots it when the command line does not say.
CI_KEYS = {"mode": str, "profile": str, "qemu_args": list, "timeout": (int, float)}
CI_MODES = MODES
# The one default of a smoke test's timeout (seconds): image and series used to say 30 and 60.
SMOKE_TIMEOUT = 30
TREE_KEYS = {"base", "subject_prefix", "to", "cc", "list"}
SMOKE_KEYS = {"name", "where", "run", "expect", "timeout", "skip", "needs", "on_base"}
# [[smoke]] on_base: how the check runs on the base tree without the series (a matrix
# cell's checks_from, `kpt ci --base-only --checks-from SERIES`), to show what the series fixes.
ON_BASE_KEYS = {"expect", "skip"}
# What a check may need beyond its place: a mode without it lists the check as SKIP with the reason.
SMOKE_NEEDS = {"domU": "a domU (xen+domU mode)", "device-model": "the series' device model (xen+domU mode)"}
SMOKE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]+$")  # a KTAP test name, as README documents
# An upstream change the series relies on; with `file` and `contains` it is a probe
# that check-apply evaluates on every base (a fixed string in a file of the tree); with
# `patches` too, those patches of the series count as merged on a base where it is present.
UPSTREAM_KEYS = {"name", "tree", "ref", "url", "file", "contains", "patches"}
# [[backport]]: a patch of the series that carries an upstream commit (stable form).
BACKPORT_KEYS = {"patch", "commit", "subject", "author"}
FULL_ID_RE = re.compile(r"^[0-9a-f]{40}$")
MBOX_FROM_RE = re.compile(rb"^From [0-9a-f]{40} ", re.M)
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class Patch:
    file: str  # name in the tree folder, as the order file spells it
    subject: str  # without the [PATCH ...] prefix
    author: str
    date: str
    tree: str
    path: Path

    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()


@dataclass
class SmokeTest:
    name: str
    where: str  # guest, dom0 or domU
    run: str  # a shell command line, run by the guest's /init
    expect: str | None = None  # regex the output must match (exit 0 suffices if None)
    timeout: float = SMOKE_TIMEOUT
    skip: str = ""  # listed as SKIP with this reason (replaces a dependency's check of that name)
    needs: list[str] = field(default_factory=list)  # keys of SMOKE_NEEDS
    # On the base tree without the series: another expect (what the bug looks like) or a
    # skip reason (the check looks at something only the series adds).
    on_base: dict[str, str] = field(default_factory=dict)

    def as_check(self, series: str, *, on_base: bool = False) -> dict:
        """The check as the image's /init templates take it; on_base: its form on the base tree."""
        check = {"series": series, "name": self.name, "where": self.where, "run": self.run or "true",
                 "expect": self.expect or "", "timeout": max(1, int(self.timeout)), "skip": self.skip,
                 "needs": list(self.needs)}
        if on_base:
            if "expect" in self.on_base:
                check["expect"] = self.on_base["expect"]
            if self.on_base.get("skip") and not check["skip"]:
                check["skip"] = "on the base: " + self.on_base["skip"]
            if "device-model" in self.needs and not check["skip"]:
                check["skip"] = "on the base: no device model of the series"
        return check


@dataclass
class Backport:
    """A patch declared (series.toml [[backport]]) to carry upstream commit `commit`.

    Its mail must have the stable form: the original author and message, the
    line `commit <full id> upstream.` on top of the body, the sign-off of who
    carries it last (gates.gate_backport checks it)."""

    tree: str
    file: str  # the patch file, as the tree's order file names it
    commit: str  # the full upstream commit id
    subject: str | None = None  # the upstream subject, when declared
    author: str | None = None  # the upstream author ("Name <addr>"), when declared
    line: int = 0  # of its [[backport]] header in series.toml


@dataclass
class SeriesTree:
    name: str
    base: str | None
    subject_prefix: str = "PATCH"
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    list: str | None = None  # the mailing list (a key of series.toml, hence the name)
    patches: builtins.list[Patch] = field(default_factory=builtins.list)
    folder: Path = Path()

    @property
    def order_file(self) -> Path:
        return self.folder / ORDER


@dataclass
class Series:
    name: str
    version: int
    summary: str
    path: Path
    depends: list[str] = field(default_factory=list)
    trees: dict[str, SeriesTree] = field(default_factory=dict)
    changelog: dict[int, str] = field(default_factory=dict)
    smoke: list[SmokeTest] = field(default_factory=list)
    fragments: list[Path] = field(default_factory=list)
    upstream: list[dict] = field(default_factory=list)
    backports: list[Backport] = field(default_factory=list)
    domu: dict = field(default_factory=dict)  # the [domU] keys the file gives
    ci: dict = field(default_factory=dict)  # the [ci] keys the file gives
    cover_title: str = ""
    cover_body: str = ""

    @property
    def toml_path(self) -> Path:
        return self.path / SERIES_TOML

    @property
    def branch(self) -> str:
        return branch_name(self.name, self.version)

    def backport(self, tree: str, file: str) -> Backport | None:
        """The [[backport]] declaration of one patch, if it has one."""
        return next((b for b in self.backports if b.tree == tree and b.file == file), None)

    def tree(self, name: str | None) -> SeriesTree:
        """The series' part for tree `name` (None: its only tree)."""
        if name is None:
            if len(self.trees) == 1:
                return next(iter(self.trees.values()))
            known = ", ".join(self.trees) or "none"
            raise UsageError(f"series '{self.name}' touches several trees ({known}): say which with --tree")
        try:
            return self.trees[name]
        except KeyError:
            known = ", ".join(self.trees) or "none"
            raise UsageError(f"series '{self.name}' has no patches for tree '{name}' ({self.toml_path} has: {known})") from None


def branch_name(name: str, version: int) -> str:
    return f"kpt/{name}/v{version}"


# --------------------------------------------------------------------------
# patch files


def _where(path: Path, lineno: int | None = None) -> str:
    return f"{path}:{lineno}" if lineno else str(path)


def _unquote_c(p: str) -> str:
    """git's C-quoted path ("b/\\056\\056/x") as the path it names."""
    body = p[1:-1] if len(p) >= 2 and p.endswith('"') else p[1:]
    out = bytearray()
    i = 0
    raw = body.encode("utf-8", "surrogateescape")
    simple = {ord("n"): 10, ord("t"): 9, ord('"'): 34, ord("\\"): 92, ord("a"): 7, ord("b"): 8,
              ord("f"): 12, ord("r"): 13, ord("v"): 11}
    while i < len(raw):
        c = raw[i]
        if c == 92 and i + 1 < len(raw):
            nxt = raw[i + 1]
            if i + 4 <= len(raw) and all(48 <= x <= 55 for x in raw[i + 1:i + 4]):
                out.append(int(raw[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
            out.append(simple.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8", "replace")


def _unquoted(p: str) -> str:
    p = p.strip()
    return _unquote_c(p) if p.startswith('"') else p


def _check_path(path: Path, lineno: int, p: str) -> None:
    p = p.strip()
    if p.startswith('"'):
        p = _unquote_c(p)
    if p == "/dev/null":
        return
    if p.startswith("/"):
        raise UsageError(f"{_where(path, lineno)}: patch touches absolute path '{p}'")
    parts = p.split("/")
    if ".." in parts:
        raise UsageError(f"{_where(path, lineno)}: patch touches '{p}', outside the tree")
    if any(x.lower() == ".git" for x in parts):
        raise UsageError(f"{_where(path, lineno)}: patch touches '{p}', inside git's own folder")


def _check_diff(path: Path, data: bytes, start_line: int) -> int:
    """Paths stay inside the tree and hunks are complete; returns the file count."""
    lines = data.split(b"\n")
    files = 0
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        lineno = start_line + i
        if line.startswith(b"diff --git "):
            files += 1
            m = re.match(rb"diff --git (\"?a/.*?\"?) (\"?b/.*\"?)$", line)
            if m:
                for part in m.groups():
                    text = _unquoted(part.decode("utf-8", "surrogateescape"))
                    _check_path(path, lineno, text[2:])
        elif line.startswith((b"GIT binary patch", b"Binary files ")):
            raise UsageError(f"{_where(path, lineno)}: a binary patch; kpt stores text patches only")
        elif line.startswith((b"--- ", b"+++ ")) and i + 1 < n:
            name = _unquoted(line[4:].split(b"\t")[0].decode("utf-8", "surrogateescape"))
            if name != "/dev/null":
                if not name.startswith("/"):
                    name = name.split("/", 1)[1] if "/" in name else name
                _check_path(path, lineno, name)
        elif line.startswith((b"rename from ", b"rename to ", b"copy from ", b"copy to ")):
            _check_path(path, lineno, line.split(b" ", 2)[2].decode("utf-8", "replace"))
        elif line.startswith(b"@@ "):
            m = HUNK_RE.match(line)
            if not m:
                raise UsageError(f"{_where(path, lineno)}: malformed hunk header")
            old = int(m.group(2) if m.group(2) is not None else 1)
            new = int(m.group(4) if m.group(4) is not None else 1)
            j = i + 1
            while old > 0 or new > 0:
                if j >= n or (j == n - 1 and lines[j] == b""):
                    raise UsageError(f"{_where(path, lineno)}: patch is truncated (hunk ends early)")
                h = lines[j]
                c = h[:1]
                if c in (b" ", b""):
                    old -= 1
                    new -= 1
                elif c == b"-":
                    old -= 1
                elif c == b"+":
                    new -= 1
                elif c == b"\\":
                    pass
                else:
                    raise UsageError(f"{_where(path, start_line + j)}: patch is truncated or corrupt (hunk ends early)")
                j += 1
            while j < n and lines[j].startswith(b"\\"):
                j += 1
            nxt = lines[j] if j < n else b""
            if old < 0 or new < 0 or nxt.startswith((b" ", b"+")) or (
                    nxt.startswith(b"-") and not nxt.startswith((b"--- ", b"-- "))):
                # More hunk lines than the header counts: git am stops on it.
                raise UsageError(f"{_where(path, lineno)}: hunk line counts do not match its header")
            i = j
            continue
        i += 1
    return files


def _decode_header(value: str) -> str:
    return " ".join(str(value).split())


def parse_patch(path: Path, tree: str = "", file: str | None = None) -> Patch:
    """Read and validate one patch file (git format-patch form, one patch)."""
    data = read_bytes(path, "patch")
    if not data.strip():
        raise UsageError(f"{path}: empty file, not a patch")
    if b"\0" in data:
        raise UsageError(f"{path}: not a patch (binary data)")
    if b"\r\n" in data:
        lineno = data[: data.index(b"\r\n")].count(b"\n") + 1
        raise UsageError(f"{_where(path, lineno)}: CRLF line endings (convert with dos2unix; git am would mangle them)")
    count = len(MBOX_FROM_RE.findall(data))
    if count > 1:
        raise UsageError(f"{path}: holds {count} patches; one patch a file (`kpt series import` splits an mbox)")
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise UsageError(f"{path}: not a patch (no header/body separator)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = head[: exc.start].count(b"\n") + 1
        raise UsageError(f"{_where(path, lineno)}: header is not UTF-8 (encode it as RFC 2047, or re-export with git format-patch)") from None
    msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.default)
    try:
        subject = msg.get("Subject")
        author = msg.get("From")
        date = msg.get("Date")
    except (ValueError, TypeError, IndexError, email.errors.MessageError) as exc:
        # An RFC 2047 word may hide a CR/LF that the mail parser refuses.
        raise UsageError(f"{path}: a header cannot be decoded ({exc})") from None
    for key, value in (("Subject", subject), ("From", author)):
        if value and CONTROL_RE.search(str(value)):
            raise UsageError(f"{path}: the {key}: header holds control characters (CR, LF, ...)")
    if not subject or not author:
        missing = "Subject" if not subject else "From"
        raise UsageError(f"{path}: not in git format-patch form (no {missing}: header)")
    if "@" not in email.utils.parseaddr(str(author))[1]:
        # git am stops on it without saying why.
        raise UsageError(f"{path}: From: '{_decode_header(author)}' has no e-mail address (Name <mail@host>)")
    if b"\ndiff --git " not in b"\n" + body and b"\n--- " not in b"\n" + body:
        raise UsageError(f"{path}: not a patch (no diff in it)")
    body_start = head.count(b"\n") + 3
    diff_at = body.find(b"\ndiff --git ")
    if diff_at < 0:
        diff_at = body.find(b"\n--- ")
    start_line = body_start + body[: diff_at + 1].count(b"\n")
    _check_diff(path, body[diff_at + 1:], start_line)
    if not data.endswith(b"\n"):
        lineno = data.count(b"\n") + 1
        raise UsageError(f"{_where(path, lineno)}: the last line has no newline (the file is cut; git am would stop)")
    subject = _decode_header(subject)
    subject = re.sub(r"^\[[^\]]*\]\s*", "", subject)
    return Patch(file=file or path.name, subject=subject, author=_decode_header(author),
                 date=_decode_header(date or ""), tree=tree, path=path)


def read_order(order: Path) -> list[tuple[int, str]]:
    """The quilt order file: (line number, patch file) for each patch."""
    if not order.exists():
        raise UsageError(f"{order}: missing (the tree's order file, one patch a line)")
    text = read_text(order, "order file")
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 1 and parts[1:] != ["-p1"]:
            raise UsageError(f"{order}:{i}: only -p1 patches are supported ('{line}')")
        name = parts[0]
        if "/" in name or name in (".", ".."):
            raise UsageError(f"{order}:{i}: '{name}': patch files live next to the order file")
        out.append((i, name))
    return out


def diffstat(patch: Patch) -> list[tuple[str, str, str]]:
    """(added, deleted, path) per file, from git apply --numstat (validates too)."""
    # Outside any repository: inside one (patches/ is in ours) git apply ignores
    # the paths that lie outside the current folder, i.e. all of them.
    res = gitutil.git(None, "apply", "--numstat", str(patch.path), cwd="/")
    if not res.ok:
        why = (res.stderr.strip().splitlines() or ["unreadable"])[0]
        raise UsageError(f"{patch.path}: git cannot read this patch: {why}")
    rows = []
    for line in res.stdout.splitlines():
        a, d, p = line.split("\t", 2)
        rows.append((a, d, p))
    return rows


# --------------------------------------------------------------------------
# series.toml


def _err(path: Path, key: str, what: str) -> UsageError:
    return UsageError(f"{path}: '{key}' {what}")


def _str_list(path: Path, key: str, v) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _err(path, key, "must be a list of strings")
    return list(v)


def _opt_str(path: Path, key: str, v) -> str | None:
    if v is not None and not isinstance(v, str):
        raise _err(path, key, "must be a string")
    return v


def _unknown(path: Path, prefix: str, keys, allowed) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise UsageError(f"{path}: unknown key '{prefix}{extra[0]}' (known: {', '.join(sorted(allowed))})")


def fragment_path(toml: Path, folder: Path, f: str, must_exist: bool = True) -> Path:
    """A series' config fragment: a file inside its own folder, nowhere else."""
    fp = (folder / f).resolve()
    if Path(f).is_absolute() or not fp.is_relative_to(folder.resolve()):
        raise _err(toml, "fragments", f"names '{f}', outside the series folder {folder}")
    if must_exist and not fp.is_file():
        raise _err(toml, "fragments", f"names '{f}', no such file in {folder}")
    return fp


def series_dir(ws: Workspace, name: str) -> Path:
    if not valid_name(name):
        raise UsageError(f"'{name}' is not a valid series name ({NAME_RULE})")
    return ws.patches_dir / name


def _upstream_patches(path: Path, series: Series, i: int, u: dict) -> None:
    """`patches` of an [[upstream]] probe: files of this series' folder for the probe's tree."""
    if "patches" not in u:
        return
    names = _str_list(path, f"upstream[{i}].patches", u["patches"])
    if "file" not in u:
        raise _err(path, f"upstream[{i}].patches", "needs a probe ('file' and 'contains') to decide where")
    st = series.trees.get(u.get("tree", ""))
    known = {p.file for p in st.patches} if st else set()
    for n in names:
        if n not in known:
            raise _err(path, f"upstream[{i}].patches", f"'{n}' is not a patch of trees.{u.get('tree')} of this series")


def _typed_table(path: Path, key: str, table, types: dict) -> dict:
    """A small table of known keys with their types (lists are lists of strings)."""
    if not isinstance(table, dict):
        raise _err(path, key, "must be a table")
    _unknown(path, key + ".", table, set(types))
    for k, v in table.items():
        want = types[k]
        ok = isinstance(v, want) and not isinstance(v, bool)
        if ok and want is list:
            ok = all(isinstance(x, str) for x in v)
        if not ok:
            kind = {int: "a whole number", str: "a string", list: "a list of strings"}.get(want, "a number")
            raise _err(path, f"{key}.{k}", f"must be {kind}")
    return dict(table)


def _load_trees(ws: Workspace, path: Path, folder: Path, data: dict, series: Series) -> None:
    trees = data.get("trees", {})
    if not isinstance(trees, dict):
        raise _err(path, "trees", "must be a table of [trees.<tree>] tables")
    for tname, t in trees.items():
        key = f"trees.{tname}"
        if not isinstance(t, dict):
            raise _err(path, key, "must be a table")
        _unknown(path, key + ".", t, TREE_KEYS)
        if tname not in ws.trees:
            known = ", ".join(sorted(ws.trees)) or "none"
            raise UsageError(f"{path}: [{key}]: unknown tree '{tname}' (kpt.toml has: {known})")
        st = SeriesTree(
            name=tname,
            base=_opt_str(path, key + ".base", t.get("base")),
            subject_prefix=_opt_str(path, key + ".subject_prefix", t.get("subject_prefix")) or "PATCH",
            to=_str_list(path, key + ".to", t.get("to", [])),
            cc=_str_list(path, key + ".cc", t.get("cc", [])),
            list=_opt_str(path, key + ".list", t.get("list")),
            folder=folder / tname,
        )
        seen = set()
        for lineno, fname in read_order(st.order_file):
            if fname in seen:
                raise UsageError(f"{st.order_file}:{lineno}: {fname} is listed twice")
            seen.add(fname)
            ppath = st.folder / fname
            if not ppath.is_file():
                raise UsageError(f"{st.order_file}:{lineno}: {fname}: no such patch file in {st.folder}")
            st.patches.append(parse_patch(ppath, tname, fname))
        series.trees[tname] = st


def _load_changelog(path: Path, data: dict, series: Series) -> None:
    changelog = data.get("changelog", {})
    if not isinstance(changelog, dict):
        raise _err(path, "changelog", "must be a table (v2 = \"...\")")
    for k, v in changelog.items():
        m = re.fullmatch(r"v?(\d+)", k)
        if not m or not isinstance(v, str):
            raise _err(path, f"changelog.{k}", "must be vN = \"text\"")
        series.changelog[int(m.group(1))] = v


def _on_base(path: Path, key: str, table) -> dict[str, str]:
    if not isinstance(table, dict):
        raise _err(path, key, "must be a table: { expect = \"regex\" } or { skip = \"reason\" }")
    _unknown(path, key + ".", table, ON_BASE_KEYS)
    out = {}
    for k, v in table.items():
        if not isinstance(v, str) or (k == "skip" and not v):
            raise _err(path, f"{key}.{k}", "must be a string" + (" (the reason)" if k == "skip" else ""))
        out[k] = v
    if "expect" in out:
        try:
            re.compile(out["expect"])
        except re.error as exc:
            raise _err(path, f"{key}.expect", f"is not a valid regex: {exc}") from None
    if len(out) > 1:
        raise _err(path, key, "gives expect and skip: a check skipped on the base expects nothing there")
    return out


def _load_smoke(path: Path, data: dict, series: Series) -> None:
    smoke = data.get("smoke", [])
    if not isinstance(smoke, list):
        raise _err(path, "smoke", "must be [[smoke]] tables")
    for i, s in enumerate(smoke):
        key = f"smoke[{i}]"
        if not isinstance(s, dict):
            raise _err(path, key, "must be a table")
        _unknown(path, key + ".", s, SMOKE_KEYS)
        skip = s.get("skip", "")
        if not isinstance(skip, str):
            raise _err(path, f"{key}.skip", "must be a string (the reason)")
        for req in ("name", "run"):
            if req == "run" and skip and "run" not in s:
                continue
            if not isinstance(s.get(req), str) or not s.get(req):
                raise _err(path, f"{key}.{req}", "is required (a string)")
        if not SMOKE_NAME_RE.match(s["name"]):
            raise _err(path, f"{key}.name", f"is '{s['name']}'; a KTAP test name is letters, digits and _.:+-")
        where = s.get("where", "guest")
        if where not in SMOKE_WHERE:
            raise _err(path, f"{key}.where", f"is '{where}'; one of {', '.join(SMOKE_WHERE)}")
        expect = _opt_str(path, f"{key}.expect", s.get("expect"))
        if expect is not None:
            try:
                re.compile(expect)
            except re.error as exc:
                raise _err(path, f"{key}.expect", f"is not a valid regex: {exc}") from None
        timeout = s.get("timeout", SMOKE_TIMEOUT)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
            # `not 0 < x` also refuses nan, which compares false to everything.
            raise _err(path, f"{key}.timeout", "must be a positive number of seconds (at most a day)")
        needs = _str_list(path, f"{key}.needs", s.get("needs", []))
        for n in needs:
            if n not in SMOKE_NEEDS:
                raise _err(path, f"{key}.needs", f"names '{n}'; one of {', '.join(SMOKE_NEEDS)}")
        on_base = _on_base(path, f"{key}.on_base", s.get("on_base", {}))
        series.smoke.append(SmokeTest(s["name"], where, s.get("run", "true"), expect, float(timeout), skip, needs,
                                      on_base))
    # One name per place: a check named alike in dom0 and in the domU is two checks.
    places = [(s.where, s.name) for s in series.smoke]
    dup = {p for p in places if places.count(p) > 1}
    if dup:
        where, dname = sorted(dup)[0]
        raise _err(path, "smoke", f"has two tests named '{dname}' in {where}")



def toml_line(text: str, table: str, index: int, key: str | None = None) -> int:
    """The line of the index-th [[table]] header in a TOML text, or of `key` inside it (0: not found).

    tomllib keeps no positions; errors about an array of tables still name the line."""
    header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
    seen, start = -1, 0
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if header.match(line):
            seen += 1
            if seen == index:
                start = i
                break
    if not start or key is None:
        return start
    for i in range(start, len(lines)):
        line = lines[i]
        if re.match(r"^\s*\[", line):
            break
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return i + 1
    return start


def _load_backports(path: Path, text: str, data: dict, series: Series) -> None:
    items = data.get("backport", [])
    if not isinstance(items, list) or not all(isinstance(b, dict) for b in items):
        raise _err(path, "backport", "must be [[backport]] tables")
    for i, b in enumerate(items):
        def fail(key: str | None, what: str, i: int = i) -> UsageError:
            where = _where(path, toml_line(text, "backport", i, key))
            return UsageError(f"{where}: [[backport]] {f'{key!r} ' if key else ''}{what}")

        extra = sorted(set(b) - BACKPORT_KEYS)
        if extra:
            raise fail(extra[0], f"is not a known key (known: {', '.join(sorted(BACKPORT_KEYS))})")
        for k, v in b.items():
            if not isinstance(v, str):
                raise fail(k, "must be a string")
        for req in ("patch", "commit"):
            if not b.get(req):
                raise fail(None, f"needs '{req}'")
        if not FULL_ID_RE.match(b["commit"]):
            raise fail("commit", f"is '{b['commit']}'; the stable form names the full 40-digit "
                                 f"lower-case commit id (git rev-parse)")
        tree, _, file = b["patch"].partition("/")
        st = series.trees.get(tree)
        if st is None or not any(p.file == file for p in st.patches):
            listed = ", ".join(f"{t}/{p.file}" for t, s in series.trees.items() for p in s.patches) or "none"
            raise fail("patch", f"names '{b['patch']}', not a patch of the series (<tree>/<file> "
                                f"as the order file lists it; the series has: {listed})")
        if series.backport(tree, file):
            raise fail("patch", f"declares '{b['patch']}' a second time")
        author = b.get("author")
        if author is not None and "@" not in email.utils.parseaddr(author)[1]:
            raise fail("author", f"is '{author}'; write it as Name <mail@host>")
        series.backports.append(Backport(tree, file, b["commit"], b.get("subject"), author,
                                         toml_line(text, "backport", i)))


def load_series(ws: Workspace, name: str) -> Series:
    folder = series_dir(ws, name)
    # An export or rebase killed half-way left a journal: finish or undo it first.
    safefs.recover(folder)
    path = folder / SERIES_TOML
    if not path.is_file():
        known = ", ".join(s for s in _names(ws)) or "none"
        raise UsageError(f"series '{name}': no {path} (known series: {known})")
    try:
        text = read_text(path, "series file")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    _unknown(path, "", data, TOP_KEYS)

    sname = data.get("name", name)
    if sname != name:
        raise _err(path, "name", f"is '{sname}' but the folder is '{name}'")
    version = data.get("version", 1)
    if isinstance(version, str) and re.fullmatch(r"v?\d+", version):
        version = int(version.lstrip("v"))
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _err(path, "version", "must be a whole number >= 1 (1, 2, ...)")
    summary = _opt_str(path, "summary", data.get("summary", "")) or ""
    depends = _str_list(path, "depends", data.get("depends", []))
    for d in depends:
        if not valid_name(d):
            raise _err(path, "depends", f"names '{d}', not a valid series name")
        if d == name:
            raise UsageError(f"{path}: 'depends' names the series itself: dependency cycle {name} -> {name}")

    series = Series(name=name, version=version, summary=summary, path=folder, depends=depends)

    _load_trees(ws, path, folder, data, series)
    _load_changelog(path, data, series)
    _load_smoke(path, data, series)
    for f in _str_list(path, "fragments", data.get("fragments", [])):
        series.fragments.append(fragment_path(path, folder, f))

    upstream = data.get("upstream", [])
    if not isinstance(upstream, list) or not all(isinstance(u, dict) for u in upstream):
        raise _err(path, "upstream", "must be [[upstream]] tables")
    for i, u in enumerate(upstream):
        _unknown(path, f"upstream[{i}].", u, UPSTREAM_KEYS)
        for k, v in u.items():
            if k != "patches" and not isinstance(v, str):
                raise _err(path, f"upstream[{i}].{k}", "must be a string")
        if ("file" in u) != ("contains" in u):
            raise _err(path, f"upstream[{i}]", "a probe needs both 'file' and 'contains'")
        _upstream_patches(path, series, i, u)
    series.upstream = list(upstream)
    _load_backports(path, text, data, series)
    series.domu = _typed_table(path, "domU", data.get("domU", {}), DOMU_KEYS)
    extra = series.domu.get("extra", "")
    if any(c in extra for c in "\"\n"):
        raise _err(path, "domU.extra", "must be one line of kernel arguments without quotes")
    for i, spec in enumerate(series.domu.get("virtio", [])):
        # Each one becomes a quoted string of xl's `virtio = [...]`.
        if not isinstance(spec, str) or not spec or any(c in spec for c in "\"'\n"):
            raise _err(path, f"domU.virtio[{i}]", "must be one xl virtio spec string without quotes")
    series.ci = _typed_table(path, "ci", data.get("ci", {}), CI_KEYS)
    if "mode" in series.ci and series.ci["mode"] not in CI_MODES:
        raise _err(path, "ci.mode", f"is '{series.ci['mode']}'; one of {', '.join(CI_MODES)}")

    cover = folder / COVER
    if cover.exists():
        text = read_bytes(cover, "cover letter").decode("utf-8", errors="replace")
        title, _, body = text.partition("\n")
        series.cover_title = title.lstrip("# ").strip()
        series.cover_body = body.strip("\n")
    else:
        series.cover_title = summary
    return series


def _names(ws: Workspace) -> list[str]:
    if not ws.patches_dir.is_dir():
        return []
    return sorted(p.parent.name for p in ws.patches_dir.glob(f"*/{SERIES_TOML}"))


def list_series(ws: Workspace) -> list[Series]:
    rows = [load_series(ws, n) for n in _names(ws)]
    # The same check every other command makes, on the loaded series: a cycle
    # or a missing dependency is reported here too, not only at apply time.
    by = {s.name: s for s in rows}
    done: set[str] = set()

    def visit(s: Series, stack: list[str]) -> None:
        if s.name in done:
            return
        if s.name in stack:
            cycle = " -> ".join(stack[stack.index(s.name):] + [s.name])
            raise UsageError(f"dependency cycle: {cycle} (fix 'depends' in {s.toml_path})")
        for d in s.depends:
            if d not in by:
                raise UsageError(f"{s.toml_path}: 'depends' names '{d}', no such series")
            visit(by[d], stack + [s.name])
        done.add(s.name)

    for s in rows:
        visit(s, [])
    return rows


def resolve_depends(ws: Workspace, name: str) -> list[Series]:
    """The series' dependencies, deepest first, each once, then the series itself."""
    order: list[Series] = []
    done: set[str] = set()

    def visit(n: str, stack: list[str], parent: Series | None) -> None:
        if n in done:
            return
        if n in stack:
            cycle = " -> ".join(stack[stack.index(n):] + [n])
            raise UsageError(f"dependency cycle: {cycle} (fix 'depends' in {ws.patches_dir / n / SERIES_TOML})")
        if parent is not None and not (ws.patches_dir / n / SERIES_TOML).is_file():
            raise UsageError(f"{parent.toml_path}: 'depends' names '{n}', no such series")
        s = load_series(ws, n)
        for d in s.depends:
            visit(d, stack + [n], s)
        done.add(n)
        order.append(s)

    visit(name, [], None)
    return order


# --------------------------------------------------------------------------
# writing


def new_series(ws: Workspace, name: str, trees: list[str], *, summary: str = "",
               base: str | None = None) -> Series:
    folder = series_dir(ws, name)
    if folder.exists():
        raise UsageError(f"series '{name}': {folder} already exists")
    if not trees:
        raise UsageError("a series needs at least one tree (--tree)")
    for t in trees:
        ws.tree(t)
    data: dict = {"name": name, "version": 1, "summary": summary or name, "depends": [], "trees": {}}
    for t in trees:
        entry: dict = {"subject_prefix": "PATCH", "to": [], "cc": []}
        if base:
            entry["base"] = base
        data["trees"][t] = entry
    folder.parent.mkdir(parents=True, exist_ok=True)
    # A folder of our own making: a fixed name could be someone's, and would be deleted.
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=folder.parent))
    tmp.chmod(0o755)
    (tmp / SERIES_TOML).write_text(tomli_w.dumps(data))
    (tmp / COVER).write_text(f"{summary or name}\n\nWhat this series does and why.\n")
    for t in trees:
        (tmp / t).mkdir()
        (tmp / t / ORDER).write_text(f"# {name} patches for {t}, in order (quilt format)\n")
    tmp.rename(folder)
    return load_series(ws, name)


def edited_toml(series: Series, *, version: int | None = None, bases: dict[str, str] | None = None,
                changelog: dict[int, str] | None = None, backports: dict[str, str] | None = None) -> str:
    """series.toml with a few keys changed, however the file is laid out (inline tables,
    dotted keys, spaces in headers), its comments and formatting kept (tomlkit)."""
    path = series.toml_path
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        if version is not None:
            doc["version"] = version
        if bases:
            trees = doc.setdefault("trees", tomlkit.table())
            for tname, base in bases.items():
                if tname not in trees:
                    trees[tname] = tomlkit.table()
                trees[tname]["base"] = base
        for v, entry in (changelog or {}).items():
            log = doc.setdefault("changelog", tomlkit.table())
            log[f"v{v}"] = entry
        moves = backports or {}
        for item in doc.get("backport", []) if moves else []:
            if item.get("patch") in moves:  # a renamed patch: its declaration follows it
                item["patch"] = moves[item["patch"]]
        text = tomlkit.dumps(doc)
        tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.TOMLKitError, tomllib.TOMLDecodeError,
            TypeError, ValueError) as exc:  # our edit must never break the file
        raise UsageError(f"{path}: could not update it ({exc}); edit it by hand") from None
    return text


def update_toml(series: Series, **changes) -> None:
    """Change a few keys of series.toml (see edited_toml), atomically."""
    text = edited_toml(series, **changes)
    try:
        safefs.replace_file(series.toml_path, text.encode("utf-8"))
    except OSError as exc:
        raise safefs.os_error(exc) from None
