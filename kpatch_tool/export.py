"""Branch -> patch files, stacks from elsewhere -> a series, and rebase.

The normal form of a stored patch is what

    git format-patch --zero-commit --no-signature --no-numbered --full-index
                     --no-thread --no-to --no-cc --no-add-header --no-notes
                     --subject-prefix=PATCH

writes, with the user's and system git config switched off (gitutil): the
commit id is zeroed and the git version trailer dropped, so exporting an
unchanged branch again changes no byte; `[PATCH]` without numbers keeps a
patch's bytes unchanged when another patch is added or moved; the diffstat is
kept (reviewers read it); full blob ids let `git am -3` and check-apply merge
on any base holding the blobs. The mail stage renumbers and re-prefixes.

The files are written beside the old ones and switched in by a journalled
transaction (safefs.Txn): a failure, a kill or a full disk leaves the complete
old set, or the next kpt command completes the new one. Only patches the order
file lists are ever replaced or removed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import apply as applymod
from kpatch_tool import charset, gitutil, safefs, trees
from kpatch_tool.checkapply import TempIndex, chain_patches, open_tree
from kpatch_tool.errors import ApplyError, UsageError
from kpatch_tool.series import (ORDER, Series, _check_diff, load_series, new_series, parse_patch,
                                read_order, resolve_depends, series_dir, edited_toml)
from kpatch_tool.workspace import Workspace

FORMAT_PATCH = ["format-patch", "--zero-commit", "--no-signature", "--no-numbered", "--full-index",
                "--no-thread", "--no-to", "--no-cc", "--no-add-header", "--no-notes", "--no-attach",
                "--subject-prefix=PATCH", "--no-cover-letter", "--no-base"]
EXTRA_CONFIG = ["-c", "format.useAutoBase=false", "-c", "format.encodeEmailHeaders=true",
                "-c", "format.filenameMaxLength=64"]


@dataclass
class ExportResult:
    series: str
    tree: str
    folder: Path
    range: str
    files: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # same name, new bytes
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)  # *.patch the order file does not list: left alone

    @property
    def touched(self) -> bool:
        return bool(self.changed or self.added or self.removed)


def format_patches(repo: Path, start: str, tip: str, outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    res = gitutil.git(repo, *EXTRA_CONFIG, *FORMAT_PATCH, "-o", str(outdir), f"{start}..{tip}", timeout=600)
    if not res.ok:
        raise UsageError(f"git format-patch {start[:12]}..{tip[:12]} failed: {res.stderr.strip()[:200]}")
    return [Path(l) for l in res.stdout.splitlines() if l.strip()]


def _order_header(order: Path) -> str:
    if not order.is_file():
        return ""
    head = []
    for line in order.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#") or not line.strip():
            head.append(line)
        else:
            break
    return "\n".join(head).rstrip("\n") + "\n" if head else ""


def write_tree_folder(folder: Path, patches: list[Path], header: str = "",
                      txn: safefs.Txn | None = None) -> ExportResult:
    """Make the tree folder hold these patches, in this order, all or nothing.

    Only what the old order file lists is replaced or removed: a `*.patch` it does not
    list is the user's draft and stays (reported in `drafts`), as do all other files.
    Unchanged patches are not rewritten (their inode and mtime stay: make, rsync and
    editors see no change). With `txn` the writes join a larger change (rebase also
    rewrites series.toml); else they are committed here.
    """
    res = ExportResult("", folder.name, folder, "")
    order = folder / ORDER
    listed: list[str] = []
    if order.is_file():
        try:
            listed = [n for _, n in read_order(order)]
        except UsageError:
            listed = []  # an unreadable order file is replaced; its patches count as drafts
    on_disk = {p.name: p for p in folder.glob("*.patch")} if folder.is_dir() else {}
    old = {n: on_disk[n].read_bytes() for n in listed if n in on_disk}
    old_bytes = set(old.values())
    drafts = {n: p for n, p in on_disk.items() if n not in old}
    own = txn or safefs.Txn(folder.parent)
    names, new_bytes = [], set()
    for src in patches:
        data = src.read_bytes()
        n = src.name
        names.append(n)
        new_bytes.add(data)
        if n in drafts:
            if drafts.pop(n).read_bytes() != data:
                raise UsageError(f"{folder / n}: not in {order.name} (a draft of yours?) and the export "
                                 f"would overwrite it with another patch; rename or move it, then export again")
            res.added.append(n)  # the draft is the patch: it joins the order file as it is
            continue
        if old.get(n) == data:
            res.unchanged.append(n)
            continue
        own.write(folder / n, data)
        if n in old:
            res.changed.append(n)
        elif data in old_bytes:
            res.unchanged.append(n)  # renumbered only
        else:
            res.added.append(n)
    for n in old:
        if n not in names:
            own.remove(folder / n)
    res.removed = sorted(n for n, b in old.items() if n not in names and b not in new_bytes)
    order_text = (header + "".join(n + "\n" for n in names)).encode()
    if not order.is_file() or order.read_bytes() != order_text:
        own.write(order, order_text)
    res.files = names
    res.drafts = sorted(drafts)
    if txn is None:
        own.commit()
    return res


def _range(ws: Workspace, series: Series, tree: str, repo: Path, from_branch: str | None) -> tuple[str, str, dict | None]:
    """(start commit, tip commit, our apply stamp if the range is our branch)."""
    if from_branch and ".." in from_branch:
        a, b = from_branch.split("..", 1)
        start, tip = gitutil.rev(repo, a), gitutil.rev(repo, b or "HEAD")
        if not start or not tip:
            raise UsageError(f"--from {from_branch}: no such ref in {repo}")
        return start, tip, None
    branch = from_branch or series.branch
    tip = gitutil.rev(repo, f"refs/heads/{branch}") or gitutil.rev(repo, branch)
    if not tip:
        raise UsageError(f"no branch {branch} in {repo} (run `kpt apply {series.name}` first, or pass --from)")
    wt = applymod.worktree_path(ws, tree, series.name, series.version)
    stamp = applymod.read_stamp(wt)
    if stamp and stamp.get("branch") == branch and not stamp.get("series_base"):
        # Ours, but no apply finished on it (given up, or interrupted and undone): what it
        # holds is not the series, and exporting it would drop the patches.
        raise UsageError(f"branch {branch} holds no finished apply of '{series.name}'; "
                         f"run `kpt apply {series.name}` first")
    if stamp and stamp.get("branch") == branch:
        return stamp["series_base"], tip, stamp
    deps = [s for s in resolve_depends(ws, series.name)[:-1] if tree in s.trees and s.trees[tree].patches]
    if deps:
        raise UsageError(f"branch {branch} carries the depends ({', '.join(s.name for s in deps)}) too: "
                         f"say where the series starts with --from BASE..{branch}")
    st = series.trees[tree]
    base = gitutil.rev(repo, st.base or trees.get(ws, tree).ref)
    if not base:
        raise UsageError(f"{series.toml_path}: base '{st.base}' of tree {tree} does not exist")
    mb = gitutil.git(repo, "merge-base", base, tip)
    if not mb.ok:
        raise UsageError(f"{branch} and the base {st.base or 'of ' + tree} share no history")
    return mb.stdout.strip(), tip, None


def refuse_unfinished_apply(ws: Workspace, series: Series, tree: str) -> Path:
    """Hold the series' worktree (the lock apply takes) and refuse while an apply there is
    stopped or was interrupted: its branch holds part of the series, and `git am` reads
    the patch files this would rewrite."""
    wt = applymod.worktree_path(ws, tree, series.name, series.version)
    applymod.claim_worktree(wt)
    state = applymod.unfinished(wt)
    if state and "conflict" in state:
        raise UsageError(f"the apply of '{series.name}' in {wt} {state}: finish it with "
                         f"`kpt apply {series.name} --continue`, or give it up with "
                         f"`kpt apply {series.name} --abort`")
    if state:
        raise UsageError(f"the apply of '{series.name}' in {wt} was {state}: `kpt apply {series.name}` "
                         f"finishes it, `kpt apply {series.name} --abort` undoes it")
    return wt


def _backport_moves(series: Series, tree: str, files: list[Path]) -> dict[str, str]:
    """[[backport]] patches the export renames: old `<tree>/<file>` -> new, found by the
    upstream commit id the new patch's message names."""
    names = {f.name for f in files}
    moves = {}
    for bp in series.backports:
        if bp.tree != tree or bp.file in names:
            continue
        for f in files:
            if bp.commit in f.read_text(encoding="utf-8", errors="replace").partition("\n---\n")[0]:
                moves[f"{tree}/{bp.file}"] = f"{tree}/{f.name}"
                break
    return moves


def export_series(ws: Workspace, name: str, tree: str | None = None, from_branch: str | None = None,
                  toml_changes: dict | None = None) -> ExportResult:
    """Write the branch back as the series' patches; series.toml changes (rebase: base,
    version) and a renamed backport's declaration go in the same all-or-nothing change."""
    series = load_series(ws, name)
    st = series.tree(tree)
    t = open_tree(ws, st.name)
    refuse_unfinished_apply(ws, series, st.name)
    start, tip, stamp = _range(ws, series, st.name, t.repo, from_branch)
    with tempfile.TemporaryDirectory(prefix="kpt-export-") as d:
        files = format_patches(t.repo, start, tip, Path(d) / "out")
        for f in files:
            parse_patch(f, st.name)  # never store what load_series would reject
        txn = safefs.Txn(series.path)
        res = write_tree_folder(st.folder, files, _order_header(st.order_file), txn)
        moves = _backport_moves(series, st.name, files)
        if toml_changes or moves:
            changes = dict(toml_changes or {}, **({"backports": moves} if moves else {}))
            txn.write(series.toml_path, edited_toml(series, **changes).encode("utf-8"))
        txn.commit()
    res.series, res.range = name, f"{start[:12]}..{tip[:12]}"
    if stamp:
        # The branch and the patches agree again: the next apply is a no-op.
        wt = applymod.worktree_path(ws, st.name, name, series.version)
        chain = resolve_depends(ws, name)
        patches = chain_patches(chain, st.name)
        stamp = dict(stamp, digest=applymod.inputs_digest(stamp["base_commit"], patches), head=tip,
                     applied=[f"{s}/{x.file}" for s, x in patches], resolved=False)
        applymod.write_stamp(wt, stamp)
    return res


# --------------------------------------------------------------------------
# import


@dataclass
class _Mail:
    source: str  # what to name in errors
    author: str
    email: str
    date: str
    subject: str
    message: str
    patch: bytes


def _mailinfo(repo: Path, piece: Path, label: str, author: str | None) -> _Mail:
    data = piece.read_bytes()
    if b"\0" in data:
        raise UsageError(f"{label}: not a patch (binary data)")
    if b"\r\n" in data:
        raise UsageError(f"{label}: CRLF line endings (convert with dos2unix first)")
    data = charset.headers_to_utf8(data)
    with tempfile.TemporaryDirectory(prefix="kpt-mailinfo-") as d:
        msg, patch = Path(d) / "msg", Path(d) / "patch"
        res = gitutil.git(repo, "mailinfo", "-u", str(msg), str(patch), input=data, text=False)
        if not res.ok:
            raise UsageError(f"{label}: git mailinfo cannot read it: {res.stderr.decode(errors='replace').strip()[:200]}")
        info = {}
        for line in res.stdout.decode("utf-8", "replace").splitlines():
            k, _, v = line.partition(": ")
            info[k] = v
        message = msg.read_text(encoding="utf-8", errors="replace")
        pdata = patch.read_bytes()
    if not pdata.strip():
        raise UsageError(f"{label}: not a patch (no diff in it)")
    _check_diff(Path(label), pdata, 1)
    subject = info.get("Subject", "").strip()
    if not subject:
        first, _, rest = message.strip().partition("\n")
        subject, message = first.strip(), rest.strip() + "\n"
    if not subject:
        raise UsageError(f"{label}: no subject (no Subject: header, no description)")
    name, mail = info.get("Author", "").strip(), info.get("Email", "").strip()
    if not name and not mail:
        m = re.search(r"(?m)^Author:\s*(.+?)\s*<(.+?)>\s*$", message)
        if m:
            name, mail = m.group(1), m.group(2)
        elif author:
            m = re.match(r"^\s*(.+?)\s*<(.+?)>\s*$", author)
            if not m:
                raise UsageError(f"--author '{author}': expected 'Name <email>'")
            name, mail = m.group(1), m.group(2)
        else:
            raise UsageError(f"{label}: no author (no From: header); pass --author 'Name <email>'")
    return _Mail(label, name or mail, mail, info.get("Date", "").strip(), subject, message, pdata)


def _pieces(path: Path, work: Path, repo: Path) -> list[tuple[Path, str]]:
    """The patches of a quilt folder, a folder of format-patch files or an mbox."""
    if path.is_dir():
        order = path / ORDER
        if order.is_file():
            out = []
            for lineno, fname in read_order(order):
                f = path / fname
                if not f.is_file():
                    raise UsageError(f"{order}:{lineno}: {fname}: no such patch file")
                out.append((f, str(f)))
            return out
        files = sorted(p for p in path.iterdir() if p.suffix in (".patch", ".diff") and p.is_file())
        if not files:
            raise UsageError(f"{path}: no series file and no *.patch files")
        return [(f, str(f)) for f in files]
    if not path.is_file():
        raise UsageError(f"{path}: no such file or folder (or BASE..TIP range)")
    data = path.read_bytes()
    if b"\0" in data:
        raise UsageError(f"{path}: not an mbox or patch (binary data)")
    if b"\r\n" in data:
        lineno = data[: data.index(b"\r\n")].count(b"\n") + 1
        raise UsageError(f"{path}:{lineno}: CRLF line endings (convert with dos2unix first)")
    split = work / "split"
    split.mkdir()
    res = gitutil.git(repo, "mailsplit", "-b", "--keep-cr", f"-o{split}", str(path))
    if not res.ok:
        raise UsageError(f"{path}: not an mbox: {res.stderr.strip()[:200]}")
    pieces = sorted(split.iterdir())
    if not pieces:
        raise UsageError(f"{path}: no messages in this mbox")
    return [(p, f"{path} (message {i})") for i, p in enumerate(pieces, 1)]


def _commit_mails(repo: Path, base: str, mails: list[_Mail]) -> str:
    """Apply the mails on base in a temporary index, one commit each; the tip."""
    parent = base
    with TempIndex(repo, base) as idx:
        for m in mails:
            with tempfile.NamedTemporaryFile(suffix=".patch") as f:
                f.write(m.patch)
                f.flush()
                res = idx.git("apply", "--cached", f.name)
                if not res.ok:
                    # Hunks without context (diff -U0; Debian has them) apply only when
                    # git is told so; patch, quilt and dpkg-source take them as they are.
                    res3 = idx.git("apply", "--cached", "--unidiff-zero", f.name)
                    if not res3.ok:
                        res3 = idx.git("apply", "--cached", "--3way", f.name)
                    if not res3.ok:
                        why = [l for l in res.stderr.splitlines() if l.startswith("error:")]
                        raise ApplyError(f"{m.source}: '{m.subject}' does not apply on {base[:12]}",
                                         detail="\n".join(why[:6]))
            tree = idx.git("write-tree", check=True).stdout.strip()
            env = {"GIT_AUTHOR_NAME": m.author, "GIT_AUTHOR_EMAIL": m.email,
                   "GIT_COMMITTER_DATE": applymod.COMMITTER_DATE}
            if m.date:
                env["GIT_AUTHOR_DATE"] = m.date
            body = m.message.strip()
            text = m.subject + ("\n\n" + body if body else "") + "\n"
            res = gitutil.git(repo, "commit-tree", tree, "-p", parent, extra_env=env, input=text)
            if not res.ok:
                raise UsageError(f"{m.source}: cannot commit it: {res.stderr.strip()[:200]}")
            parent = res.stdout.strip()
    return parent


def import_stack(ws: Workspace, source: str, tree: str, name: str | None = None,
                 base: str | None = None, author: str | None = None,
                 summary: str | None = None) -> tuple[Series, ExportResult]:
    """Bring a quilt folder, an mbox, a folder of patches or BASE..TIP into a series."""
    ws.tree(tree)
    t = open_tree(ws, tree)
    path = Path(source).expanduser()
    rng = ".." in source and not path.exists()
    if rng:
        a, b = source.split("..", 1)
        start, tip = gitutil.rev(t.repo, a), gitutil.rev(t.repo, b or "HEAD")
        if not start or not tip:
            raise UsageError(f"{source}: no such range in tree {tree} ({t.repo})")
        base = base or a
        default_name = re.sub(r"[^A-Za-z0-9._+-]+", "-", b or "import").strip("-") or "import"
    else:
        default_name = re.sub(r"[^A-Za-z0-9._+-]+", "-", path.stem if path.is_file() else path.name) or "import"
    name = name or default_name
    folder = series_dir(ws, name)
    existing = (folder / "series.toml").is_file()
    if existing:
        s = load_series(ws, name)
        if tree in s.trees and s.trees[tree].patches:
            raise UsageError(f"series '{name}' already has patches for {tree} in {s.trees[tree].folder}")
        if tree not in s.trees:
            raise UsageError(f"series '{name}' has no [trees.{tree}] in {s.toml_path}; add it first")
    base_commit = trees.resolve(t, base)
    with tempfile.TemporaryDirectory(prefix="kpt-import-") as d:
        work = Path(d)
        if not rng:
            if path.is_dir():
                from kpatch_tool import quilt

                mails = quilt.read_folder(t.repo, path, author)
            else:
                mails = [_mailinfo(t.repo, p, label, author) for p, label in _pieces(path, work, t.repo)]
            start, tip = base_commit, _commit_mails(t.repo, base_commit, mails)
        files = format_patches(t.repo, start, tip, work / "out")
        if not files:
            raise UsageError(f"{source}: no patches in it")
        for f in files:
            parse_patch(f, tree)
        if not existing:
            series = new_series(ws, name, [tree], summary=summary or name, base=base)
        else:
            series = load_series(ws, name)
        res = write_tree_folder(series.trees[tree].folder, files, _order_header(series.trees[tree].order_file))
    res.series, res.range = name, f"{start[:12]}..{tip[:12]}"
    return load_series(ws, name), res


# --------------------------------------------------------------------------
# rebase


@dataclass
class RebaseResult:
    apply: applymod.ApplyResult
    export: ExportResult
    onto: str
    dropped: list[str]
    refreshed: list[str]
    version: int


def finish_rebase(ws: Workspace, name: str, tree: str, onto: str, bump: bool,
                  result: applymod.ApplyResult) -> RebaseResult:
    series = load_series(ws, name)
    dropped = [p.file for p in result.skipped_merged]
    version = series.version
    changes: dict = {"bases": {tree: onto}}
    if bump:
        version += 1
        changes["version"] = version
        if version not in series.changelog:
            note = f"rebased onto {onto}"
            if dropped:
                note += f"; dropped {len(dropped)} patch(es) already upstream"
            changes["changelog"] = {version: note}
    # The patches and the new base (and version) go in together: never new patches on the old base.
    exp = export_series(ws, name, tree, toml_changes=changes)
    return RebaseResult(result, exp, onto, dropped, exp.changed, version)


def rebase_series(ws: Workspace, name: str, onto: str, tree: str | None = None, bump: bool = False,
                  say=None, progress=None) -> RebaseResult:
    series = load_series(ws, name)
    st = series.tree(tree)
    result = applymod.apply_series(ws, name, st.name, onto, progress, say=say,
                                   rebase={"onto": onto, "bump": bump})
    return finish_rebase(ws, name, st.name, onto, bump, result)
