"""Apply a series (its dependencies first) in a git worktree of its tree.

The worktree lives under the cache (`worktrees/<tree>/kpt-<name>-v<version>`)
on branch `kpt/<name>/v<version>`; both are ours, the user's checkout,
branches and stash are never touched. `git am -3` runs with a fixed committer
identity and date, so the same patches on the same base give the same commit
ids, and a stamp of the inputs (base commit, patch hashes) makes a rerun with
nothing changed a no-op. When the inputs changed the branch is rebuilt, unless
the worktree holds edits or commits of the user's: those are never discarded.

Before each step (worktree add, reset, `git am`, stamp) a journal beside the
worktree says which comes next, so a run killed half-way is recognised by the
next one as kpt's own and undone or finished; the stamp and journal record the
workspace and repository, so a cache shared by two workspaces never lets one
reset the other's branch.

A patch that does not apply stops the run with exit 3 and a report (series,
patch file, subject, the files and hunks that failed, the worktree), leaving
`git am` stopped there for `kpt apply NAME --continue` or `--abort`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import gitutil, safefs, trees
from kpatch_tool.checkapply import TempIndex, chain_patches, open_tree, try_patch
from kpatch_tool.errors import ApplyError, UsageError
from kpatch_tool.series import Patch, Series, branch_name, resolve_depends
from kpatch_tool.workspace import Workspace

# A fixed committer: commit ids depend on the patches and the base only.
COMMITTER_DATE = "@1000000000 +0000"


@dataclass
class ApplyResult:
    series: str
    tree: str
    worktree: Path
    branch: str
    base_commit: str
    head_commit: str
    series_base: str  # the commit under the series' own patches (after its depends)
    applied: list[Patch] = field(default_factory=list)
    skipped_merged: list[Patch] = field(default_factory=list)
    noop: bool = False


def _am_env() -> dict[str, str]:
    return {"GIT_COMMITTER_DATE": COMMITTER_DATE}


def worktree_path(ws: Workspace, tree: str, name: str, version: int) -> Path:
    return ws.cache_dir / "worktrees" / tree / f"kpt-{name}-v{version}"


def stamp_path(wt: Path) -> Path:
    return wt.with_name(wt.name + ".stamp.json")


def pending_path(wt: Path) -> Path:
    return wt.with_name(wt.name + ".pending.json")


def journal_path(wt: Path) -> Path:
    """Where apply says which step it is about to take: written before each step, so the
    next run knows a half-made worktree or branch is kpt's own and finishes or undoes it."""
    return wt.with_name(wt.name + ".journal.json")


def read_journal(wt: Path) -> dict | None:
    try:
        rec = json.loads(journal_path(wt).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def owner(ws: Workspace, repo: Path) -> dict:
    """What makes a worktree and branch ours beyond their names: two workspaces (or two
    clones of a tree) sharing a cache map the same series to the same names."""
    return {"workspace": str(Path(ws.root).resolve()), "repo": str(Path(repo).resolve())}


def _foreign(rec: dict | None, mine: dict) -> dict | None:
    """The owner recorded in a stamp or journal, if it is not us (old records name none)."""
    if not rec or "workspace" not in rec:
        return None
    theirs = {k: rec.get(k) for k in mine}
    return theirs if theirs != mine else None


def unfinished(wt: Path) -> str | None:
    """How an apply in wt stands if it is not finished: stopped on a conflict, or
    interrupted (killed, Ctrl-C, a full disk) at a step its journal names."""
    stopped = (wt / ".git").exists() and am_in_progress(wt)
    rec = read_journal(wt)
    if stopped:
        return "stopped on a conflict (git am in progress)"
    if rec and rec.get("step") == "am-stopped":
        return "stopped on a conflict"
    if rec:
        return f"interrupted at its step '{rec.get('step')}'"
    return None


def read_stamp(wt: Path) -> dict | None:
    try:
        return json.loads(stamp_path(wt).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(wt: Path, data: dict) -> None:
    try:
        safefs.replace_file(stamp_path(wt), json.dumps(data, indent=1).encode())
    except OSError as exc:
        raise safefs.os_error(exc) from None


def inputs_digest(base_commit: str, patches: list[tuple[str, Patch]]) -> str:
    h = hashlib.sha256(base_commit.encode())
    for sname, p in patches:
        h.update(f"\0{sname}\0{p.file}\0".encode())
        h.update(p.data())
    return h.hexdigest()


def _wt_git(wt: Path, *args, **kw):
    return gitutil.git(None, *args, cwd=wt, **kw)


def am_in_progress(wt: Path) -> bool:
    res = _wt_git(wt, "rev-parse", "--git-path", "rebase-apply")
    if not res.ok:
        return False
    p = Path(res.stdout.strip())
    if not p.is_absolute():
        p = wt / p
    return p.is_dir()


def _rebase_apply_dir(wt: Path) -> Path:
    p = Path(_wt_git(wt, "rev-parse", "--git-path", "rebase-apply").stdout.strip())
    return p if p.is_absolute() else wt / p


def dirty_files(wt: Path) -> list[str]:
    res = _wt_git(wt, "status", "--porcelain", "--untracked-files=no")
    return [l[3:] for l in res.stdout.splitlines() if l.strip()]


def _branch_head(repo: Path, branch: str) -> str | None:
    return gitutil.rev(repo, f"refs/heads/{branch}")


@dataclass
class _Plan:
    chain: list[Series]
    series: Series
    tree: str
    repo: Path
    base_ref: str
    base_commit: str
    patches: list[tuple[str, Patch]]
    wt: Path
    branch: str
    digest: str
    owner: dict = field(default_factory=dict)


def chain_tree(chain, tree: str | None):
    """The last series' part for `tree`, else that of the nearest series it depends on: a
    series with nothing of its own for a tree (a test variant, say) still builds on what
    its dependencies carry there."""
    series = chain[-1]
    if tree is not None and tree not in series.trees:
        for dep in reversed(chain[:-1]):
            if tree in dep.trees:
                return dep.trees[tree]
    return series.tree(tree)


def plan(ws: Workspace, name: str, tree: str | None = None, onto: str | None = None) -> _Plan:
    chain = resolve_depends(ws, name)
    series = chain[-1]
    st = chain_tree(chain, tree)
    t = open_tree(ws, st.name)
    base_ref = onto or st.base or t.ref
    base_commit = trees.resolve(t, base_ref)
    patches = chain_patches(chain, st.name)
    wt = worktree_path(ws, st.name, name, series.version)
    return _Plan(chain, series, st.name, t.repo, base_ref, base_commit, patches, wt,
                 branch_name(name, series.version), inputs_digest(base_commit, patches),
                 owner(ws, t.repo))


def _journal(p: _Plan, step: str) -> None:
    """Say which step comes next, durably, before taking it (see journal_path)."""
    safefs.crash_point(f"apply {p.series.name}: {step}")
    rec = {**p.owner, "series": p.series.name, "tree": p.tree, "branch": p.branch,
           "worktree": str(p.wt), "base_commit": p.base_commit, "step": step, "pid": os.getpid()}
    try:
        safefs.replace_file(journal_path(p.wt), json.dumps(rec, indent=1).encode())
    except OSError as exc:
        raise safefs.os_error(exc) from None


def _same_path(a, b) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _branch_worktree(repo: Path, branch: str) -> str | None:
    """The worktree that has branch checked out, as the repository records it."""
    res = gitutil.git(repo, "worktree", "list", "--porcelain")
    path = None
    for line in res.stdout.splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree "):]
        elif line == f"branch refs/heads/{branch}":
            return path
    return None


def _forget_worktree(repo: Path, wt: Path) -> None:
    """Remove our worktree wt and its registration in repo, and nothing else of the repo's
    (`git worktree prune` would also drop the user's worktrees on unmounted disks)."""
    gitutil.git(repo, "worktree", "remove", "--force", "--force", str(wt))
    if wt.exists():
        shutil.rmtree(wt)


def _kpt_made(repo: Path, head: str, bases: list[str | None]) -> bool:
    """True if every commit between one of bases and head is one `git am` under kpt made:
    kpt's fixed committer and date. A commit of the user's (a fix, an amend) has the
    user's committer; an old kpt branch found without its stamp (a wiped cache) is
    recognised, and rebuilding it loses nothing the patches do not hold."""
    for base in bases:
        if not base or not gitutil.git(repo, "merge-base", "--is-ancestor", base, head).ok:
            continue
        res = gitutil.git(repo, "log", "--format=%cn|%ce|%cd", "--date=raw", f"{base}..{head}")
        if res.ok and all(l == f"{gitutil.COMMITTER_NAME}|{gitutil.COMMITTER_EMAIL}|{COMMITTER_DATE[1:]}"
                          for l in res.stdout.splitlines()):
            return True
    return False


def _recover(p: _Plan, say) -> None:
    """Finish or undo what an interrupted apply of ours left in p.wt (its journal says)."""
    rec = read_journal(p.wt)
    if not rec:
        return
    other = _foreign(rec, p.owner)
    if other:
        raise UsageError(f"worktree {p.wt} is being applied by workspace {other['workspace']} ({other['repo']}); "
                         f"two workspaces share the cache {p.wt.parent.parent.parent}: give each its own "
                         f"(cache_dir in kpt.toml, or KPT_CACHE)")
    step = rec.get("step")
    is_wt = (p.wt / ".git").exists()
    if step == "am-stopped" and is_wt and am_in_progress(p.wt):
        return  # a conflict waiting for --continue / --abort: the caller says so
    head = _wt_git(p.wt, "rev-parse", "HEAD").stdout.strip() if is_wt else None
    if step == "am-stopped" and head and head != rec.get("base_commit"):
        # Someone finished or dropped the stopped `git am` by hand: the branch may hold their fix.
        raise UsageError(f"the stopped apply of '{p.series.name}' in {p.wt} was continued outside kpt "
                         f"(branch {p.branch} at {head[:12]}); keep it with `kpt export {p.series.name} "
                         f"--from {rec.get('base_commit', '')[:12]}..{p.branch}`, or drop it with "
                         f"`kpt apply {p.series.name} --force`")
    say(f"an earlier apply of {p.series.name} in {p.wt} was interrupted at '{step}'; undoing that step")
    if step == "worktree-add" or (is_wt and not head):
        _forget_worktree(p.repo, p.wt)
        if _branch_head(p.repo, p.branch) == rec.get("base_commit"):
            # Made (-B) by the interrupted add and holding nothing but the base.
            gitutil.git(p.repo, "branch", "-D", p.branch)
    elif is_wt and am_in_progress(p.wt):
        _wt_git(p.wt, "am", "--abort")
    # The branch is ours as it stands (the stamp says so) and, lacking a digest, is rebuilt.
    write_stamp(p.wt, {**p.owner, "series": p.series.name, "branch": p.branch,
                       "head": _branch_head(p.repo, p.branch), "base_commit": rec.get("base_commit"),
                       "digest": None})
    pending_path(p.wt).unlink(missing_ok=True)
    journal_path(p.wt).unlink(missing_ok=True)


def _prepare_worktree(p: _Plan, force: bool, say) -> None:
    """Point our branch at the base in our worktree, refusing to lose user work."""
    repo, wt, branch = p.repo, p.wt, p.branch
    stamp = read_stamp(wt)
    head = _branch_head(repo, branch)
    holder = _branch_worktree(repo, branch)
    if holder and not _same_path(holder, wt):
        raise UsageError(f"branch {branch} in {repo} is checked out at {holder}, not in kpt's worktree {wt} "
                         f"(another kpt cache or workspace, or your own): kpt leaves it alone; "
                         f"remove that worktree or give this series another version")
    if head and not force:
        if stamp and stamp.get("head") == head:
            if stamp.get("resolved"):
                raise UsageError(f"branch {branch} holds your conflict resolution, not yet in the patches; "
                                 f"run `kpt export {p.series.name}` to keep it, or `kpt apply {p.series.name} "
                                 f"--force` to drop it")
        elif not _kpt_made(repo, head, [(stamp or {}).get("base_commit"), p.base_commit]):
            if stamp:
                raise UsageError(
                    f"branch {branch} has commits kpt did not make (at {head[:12]}); "
                    f"run `kpt export {p.series.name}` to keep them, or `kpt apply {p.series.name} --force` to drop them")
            raise UsageError(f"branch {branch} exists in {repo} with commits kpt did not make (at {head[:12]}); "
                             f"delete it or rerun with --force")
    if wt.is_dir() and (wt / ".git").exists():
        dirty = dirty_files(wt)
        if dirty:
            raise UsageError(f"worktree {wt} has uncommitted changes ({', '.join(dirty[:3])}); "
                             f"commit them and `kpt export {p.series.name}`, or discard them yourself")
        say(f"resetting {branch} to {p.base_ref} ({p.base_commit[:12]}) in {wt}")
        _journal(p, "reset")
        res = _wt_git(wt, "reset", "-q", "--hard", p.base_commit)
        if not res.ok:
            raise UsageError(f"cannot reset {wt}: {_last_line(res)}")
        return
    if wt.exists() and any(wt.iterdir()):
        raise UsageError(f"{wt} exists but is not a git worktree; kpt did not leave it there "
                         f"(no journal of an apply of its own): move it away")
    wt.parent.mkdir(parents=True, exist_ok=True)
    if holder:  # registered at our path, the folder gone (a cleaned cache): drop just that entry
        _forget_worktree(repo, wt)
    say(f"creating worktree {wt} on {branch} from {p.base_ref} ({p.base_commit[:12]})")
    _journal(p, "worktree-add")
    res = gitutil.git(repo, "-c", "checkout.workers=0", "worktree", "add", "-q", "-B", branch,
                      str(wt), p.base_commit, timeout=1800)
    if not res.ok:
        raise UsageError(f"cannot create worktree {wt}: {_last_line(res) or 'git worktree add failed'}")


def _last_line(res) -> str:
    lines = (res.stderr or res.stdout or "").strip().splitlines()
    return lines[-1] if lines else ""


def _preflight_merged(p: _Plan) -> set[int]:
    """Indexes of patches whose change is already in the base."""
    merged = set()
    with TempIndex(p.repo, p.base_commit) as idx:
        for i, (sname, patch) in enumerate(p.patches):
            pc = try_patch(idx, p.base_commit, patch, sname)
            if pc.status == "merged":
                merged.add(i)
    return merged


def _conflict_report(p: _Plan, wt: Path, todo: list[tuple[str, Patch]], am_err: str) -> ApplyError:
    ra = _rebase_apply_dir(wt)
    try:
        nxt = int((ra / "next").read_text().strip())
    except (OSError, ValueError):
        nxt = 1
    sname, patch = todo[min(max(nxt - 1, 0), len(todo) - 1)]
    head = _wt_git(wt, "rev-parse", "HEAD").stdout.strip()
    with TempIndex(p.repo, head) as idx:
        pc = try_patch(idx, head, patch, sname, history=False)
    conflicted = _wt_git(wt, "diff", "--name-only", "--diff-filter=U").stdout.split()
    lines = [
        f"series:   {sname} (applying {p.series.name} v{p.series.version} on {p.base_ref})",
        f"patch:    {patch.path}",
        f"subject:  {patch.subject}",
    ]
    if pc.hunks:
        lines.append("failed:   " + ", ".join(pc.hunks))
    if conflicted:
        lines.append("conflict: " + ", ".join(conflicted) + " (3-way merge left markers)")
    tail = [l for l in am_err.strip().splitlines() if l.startswith(("error:", "CONFLICT"))][:8]
    lines += ["git am:   " + l for l in tail]
    lines += [
        f"worktree: {wt} (branch {p.branch}, git am stopped at patch {nxt} of {len(todo)})",
        f"next:     fix the files there, `git add` them, then `kpt apply {p.series.name} --continue`;",
        f"          or `kpt apply {p.series.name} --abort` to give up",
    ]
    return ApplyError(f"{sname}: {patch.file} ({patch.subject}) does not apply on {p.base_ref}",
                      detail="\n".join(lines))


def _finish(p: _Plan, todo, merged: list[Patch], extra: dict | None = None) -> ApplyResult:
    wt = p.wt
    head = _wt_git(wt, "rev-parse", "HEAD", check=True).stdout.strip()
    own = sum(1 for s, _ in todo if s == p.series.name)
    series_base = _wt_git(wt, "rev-parse", f"HEAD~{own}" if own else "HEAD", check=True).stdout.strip()
    _journal(p, "stamp")
    write_stamp(wt, {
        **p.owner,
        "series": p.series.name, "version": p.series.version, "tree": p.tree,
        "branch": p.branch, "base_ref": p.base_ref, "base_commit": p.base_commit,
        "digest": p.digest, "head": head, "series_base": series_base,
        "applied": [f"{s}/{x.file}" for s, x in todo],
        "skipped_merged": [x.file for x in merged],
        **(extra or {}),
    })
    pending_path(wt).unlink(missing_ok=True)
    safefs.crash_point(f"apply {p.series.name}: done")
    journal_path(wt).unlink(missing_ok=True)
    return ApplyResult(p.series.name, p.tree, wt, p.branch, p.base_commit, head, series_base,
                       [x for _, x in todo], merged)


# Worktrees this process has claimed: lock file -> its open handle (the flock lives as long).
_claimed: dict[Path, object] = {}


def claim_worktree(wt: Path) -> None:
    """Hold `wt` for the rest of this process, so that another kpt (a `kpt mail` next to a
    `kpt ci`) cannot reset the branch under a build that uses it. Re-entrant within the
    process; the kernel drops the flock when the process ends, Ctrl-C and kill included,
    so the lock file left behind never holds anyone up."""
    lock = wt.parent / f"{wt.name}.lock"
    if lock in _claimed:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        who = fh.read().strip() or "another process"
        fh.close()
        raise UsageError(f"worktree {wt} is in use by another kpt ({who}); "
                         f"wait for it to finish, or use another cache (KPT_CACHE)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}: {' '.join(['kpt', *sys.argv[1:3]])}\n")
    fh.flush()
    _claimed[lock] = fh


def apply_series(ws: Workspace, name: str, tree: str | None = None, onto: str | None = None,
                 progress: Callable[[str, int, int], None] | None = None, *,
                 force: bool = False, rebase: dict | None = None,
                 say: Callable[[str], None] | None = None) -> ApplyResult:
    say = say or (lambda m: None)
    p = plan(ws, name, tree, onto)
    wt = p.wt
    claim_worktree(wt)
    _recover(p, say)
    if wt.is_dir() and (wt / ".git").exists() and am_in_progress(wt):
        raise ApplyError(f"worktree {wt} has a stopped apply of '{name}' (a conflict left by an earlier run)",
                         detail=f"next: `kpt apply {name} --continue` after fixing it, or `kpt apply {name} --abort`")
    stamp = read_stamp(wt)
    other = _foreign(stamp, p.owner)
    if other:
        raise UsageError(f"worktree {wt} and branch {p.branch} belong to workspace {other['workspace']} "
                         f"({other['repo']}): two workspaces share the cache {ws.cache_dir}; give each its own "
                         f"(cache_dir in kpt.toml, or KPT_CACHE)")
    head = _branch_head(p.repo, p.branch)
    if (stamp and head and stamp.get("digest") == p.digest and stamp.get("head") == head
            and wt.is_dir() and not dirty_files(wt)):
        names = {f"{s}/{x.file}" for s, x in p.patches}
        applied = [x for s, x in p.patches if f"{s}/{x.file}" in set(stamp.get("applied", []))]
        merged = [x for s, x in p.patches if x.file in set(stamp.get("skipped_merged", [])) and f"{s}/{x.file}" in names]
        return ApplyResult(name, p.tree, wt, p.branch, p.base_commit, head, stamp["series_base"],
                           applied, merged, noop=True)

    merged_idx = _preflight_merged(p)
    merged = [x for i, (_, x) in enumerate(p.patches) if i in merged_idx]
    for x in merged:
        say(f"skipping {x.file} ({x.subject}): already in {p.base_ref}")
    todo = [(s, x) for i, (s, x) in enumerate(p.patches) if i not in merged_idx]
    _prepare_worktree(p, force, say)
    _journal(p, "am")
    try:
        safefs.replace_file(pending_path(wt), json.dumps({
            "series": name, "tree": p.tree, "onto": onto, "digest": p.digest,
            "todo": [[s, x.file] for s, x in todo], "merged": [x.file for x in merged],
            "rebase": rebase,
        }).encode())
    except OSError as exc:
        raise safefs.os_error(exc) from None
    if todo:
        if progress:
            progress(f"git am -3 {len(todo)} patches", 0, len(todo))
        res = _wt_git(wt, "am", "-3", "-q", "--no-gpg-sign", *[str(x.path) for _, x in todo],
                      extra_env=_am_env(), timeout=1800)
        if not res.ok:
            if not am_in_progress(wt):
                raise ApplyError(f"git am failed in {wt}: {_last_line(res) or 'no output'}")
            _journal(p, "am-stopped")
            raise _conflict_report(p, wt, todo, res.stderr + res.stdout)
        if progress:
            progress("applied", len(todo), len(todo))
    return _finish(p, todo, merged)


def _pending(ws: Workspace, name: str, tree: str | None) -> tuple[_Plan, dict]:
    chain = resolve_depends(ws, name)
    series = chain[-1]
    st = chain_tree(chain, tree)
    wt = worktree_path(ws, st.name, name, series.version)
    claim_worktree(wt)
    try:
        pend = json.loads(pending_path(wt).read_text())
    except (OSError, ValueError):
        pend = None
    # A stopped apply is `git am` in progress, or one the user finished by hand
    # (`git am --continue` in the worktree): its journal still says am-stopped.
    stopped = (wt / ".git").exists() and (
        am_in_progress(wt) or (read_journal(wt) or {}).get("step") == "am-stopped")
    if not pend or not stopped:
        raise UsageError(f"no stopped apply of '{name}' in {wt} (nothing to continue or abort)")
    p = plan(ws, name, st.name, pend.get("onto"))
    other = _foreign(read_journal(wt), p.owner)
    if other:
        raise UsageError(f"the stopped apply in {wt} belongs to workspace {other['workspace']}; "
                         f"finish it there")
    return p, pend


def continue_apply(ws: Workspace, name: str, tree: str | None = None) -> tuple[ApplyResult, dict]:
    """Resume `git am` after the user fixed a conflict; returns the result and the pending record."""
    p, pend = _pending(ws, name, tree)
    by_key = {(s, x.file): x for s, x in p.patches}
    todo = [(s, by_key[(s, f)]) for s, f in pend["todo"] if (s, f) in by_key]
    merged = [x for _, x in p.patches if x.file in set(pend.get("merged", []))]
    if dirty_files(p.wt) and _wt_git(p.wt, "diff", "--name-only", "--diff-filter=U").stdout.strip():
        raise ApplyError(f"worktree {p.wt} still has unmerged files; fix them and `git add` them first")
    _journal(p, "am-stopped")
    if not am_in_progress(p.wt):
        # git am was finished by hand: take the branch if it holds one commit
        # for each patch of this apply, on its base, and nothing else.
        count = _wt_git(p.wt, "rev-list", "--count", f"{p.base_commit}..HEAD")
        on_base = _wt_git(p.wt, "merge-base", "--is-ancestor", p.base_commit, "HEAD").ok
        branch = _wt_git(p.wt, "symbolic-ref", "--short", "-q", "HEAD").stdout.strip()
        if not (count.ok and on_base and branch == p.branch and int(count.stdout) == len(todo)):
            raise ApplyError(
                f"git am is no longer running in {p.wt}, and {branch or 'HEAD'} does not hold the "
                f"{len(todo)} patches of this apply on {p.base_commit[:12]}: "
                f"`kpt apply {p.series.name} --abort` gives it up")
        return _finish(p, todo, merged, {"resolved": True}), pend
    res = _wt_git(p.wt, "am", "--continue", extra_env=_am_env(), timeout=1800)
    if not res.ok:
        if am_in_progress(p.wt):
            raise _conflict_report(p, p.wt, todo, res.stderr + res.stdout)
        raise ApplyError(f"git am --continue failed in {p.wt}: {(res.stderr or res.stdout).strip()[:200]}")
    # The stamp records the patch inputs, but the branch holds the user's fix:
    # export it to make the patches match.
    return _finish(p, todo, merged, {"resolved": True}), pend


def abort_apply(ws: Workspace, name: str, tree: str | None = None) -> Path:
    """Give up a stopped apply, or undo what an interrupted one left (both are ours)."""
    chain = resolve_depends(ws, name)
    st = chain_tree(chain, tree)
    wt = worktree_path(ws, st.name, name, chain[-1].version)
    claim_worktree(wt)
    rec = read_journal(wt)
    if rec and rec.get("step") != "am-stopped":
        p = plan(ws, name, st.name)
        _recover(p, lambda m: None)
        return wt
    p, _ = _pending(ws, name, tree)
    if am_in_progress(p.wt):
        _wt_git(p.wt, "am", "--abort", check=True)
    pending_path(p.wt).unlink(missing_ok=True)
    head = _wt_git(p.wt, "rev-parse", "HEAD", check=True).stdout.strip()
    write_stamp(p.wt, {**p.owner, "series": name, "branch": p.branch, "head": head,
                       "base_commit": p.base_commit, "digest": None})
    journal_path(p.wt).unlink(missing_ok=True)
    return p.wt
