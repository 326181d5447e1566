"""Check whether a series applies to other bases, without checking anything out.

For each base, a temporary index (GIT_INDEX_FILE) is loaded with the base's
tree and every patch is applied to that index with `git apply --cached`, in
order, so each patch is tried where the ones before it left the tree. A
Linux checkout costs tens of seconds and a gigabyte; an index costs a second.

Each patch gets one verdict:
  clean    applies as is
  offset   applies, its hunks found some lines away
  3way     plain apply fails; git am -3 would merge it (blobs known)
  fuzz     only applies with reduced context (git am would not take it)
  merged   its change is already in the base (reverse-applies, or its
           patch-id is in the base's recent history): apply/rebase skip it
  fails    does not apply; the hunks that failed are named
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpatch_tool import gitutil, proc, trees
from kpatch_tool.errors import UsageError
from kpatch_tool.series import Patch, Series, resolve_depends
from kpatch_tool.workspace import Workspace, tree_ref

# How far back the patch-id search for already-merged patches looks.
HISTORY_LIMIT = 300
OK_STATUSES = ("clean", "offset", "3way", "merged")


@dataclass
class PatchCheck:
    series: str
    file: str
    subject: str
    status: str  # clean, offset, 3way, fuzz, merged, fails
    detail: str = ""
    hunks: list[str] = field(default_factory=list)  # "path:line" of failed hunks

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


@dataclass
class BaseReport:
    base: str  # as the user gave it (REF or TREE=REF)
    tree: str
    commit: str
    results: list[PatchCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def merged(self) -> list[PatchCheck]:
        return [r for r in self.results if r.status == "merged"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


FAILED_RE = re.compile(r"^error: patch failed: (.+):(\d+)$", re.M)
MISSING_RE = re.compile(r"^error: (.+): (does not exist in index|already exists in index|No such file or directory)$", re.M)


class TempIndex:
    """A throwaway index file holding one commit's tree."""

    def __init__(self, repo: Path, commit: str):
        self.repo = repo
        self.dir = Path(tempfile.mkdtemp(prefix="kpt-index-"))
        self.path = self.dir / "index"
        self.env = {"GIT_INDEX_FILE": str(self.path)}
        res = gitutil.git(repo, "read-tree", commit, extra_env=self.env)
        if not res.ok:
            self.close()
            raise UsageError(f"cannot read tree of {commit[:12]} in {repo}: {res.stderr.strip()}")

    def git(self, *args, **kw):
        return gitutil.git(self.repo, *args, extra_env=self.env, **kw)

    def save(self) -> Path:
        bak = self.dir / "index.bak"
        shutil.copyfile(self.path, bak)
        return bak

    def restore(self, bak: Path) -> None:
        shutil.copyfile(bak, self.path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _failed_hunks(stderr: str) -> list[str]:
    hunks = [f"{m.group(1)}:{m.group(2)}" for m in FAILED_RE.finditer(stderr)]
    hunks += [f"{m.group(1)} ({m.group(2)})" for m in MISSING_RE.finditer(stderr)]
    return hunks


def patch_files(patch_path: Path) -> list[str]:
    res = gitutil.git(None, "apply", "--numstat", str(patch_path), cwd=patch_path.parent)
    return [l.split("\t", 2)[2] for l in res.stdout.splitlines() if l.count("\t") >= 2]


def patch_id(repo: Path, data: bytes) -> str | None:
    res = gitutil.git(repo, "patch-id", "--stable", input=data, text=False)
    out = res.stdout.decode().split()
    return out[0] if out else None


def merged_by_patch_id(repo: Path, commit: str, patch: Patch) -> str | None:
    """The base commit (recent, touching the same files) carrying this change."""
    pid = patch_id(repo, patch.data())
    files = patch_files(patch.path)
    if not pid or not files:
        return None
    log = gitutil.git(repo, "log", "-p", "--full-diff", "--no-merges", "--min-parents=1",
                      f"-n{HISTORY_LIMIT}", "--format=commit %H", commit, "--", *files,
                      text=False, timeout=300)
    if not log.ok or not log.stdout:
        return None
    ids = gitutil.git(repo, "patch-id", "--stable", input=log.stdout, text=False)
    for line in ids.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == pid:
            return parts[1]
    return None


def try_patch(idx: TempIndex, commit: str, patch: Patch, series: str = "",
              history: bool = True) -> PatchCheck:
    """Apply patch to the index if it can be; the verdict says how."""
    pc = PatchCheck(series, patch.file, patch.subject, "fails")
    path = str(patch.path)
    res = idx.git("apply", "--cached", "-v", path)
    if res.ok:
        offsets = re.findall(r"Hunk #\d+ succeeded at \d+ \(offset (-?\d+) lines?\)", res.stderr)
        if offsets:
            pc.status = "offset"
            pc.detail = "offset " + ", ".join(offsets)
        else:
            pc.status = "clean"
        return pc
    plain_err = res.stderr
    pc.hunks = _failed_hunks(plain_err)
    rev = idx.git("apply", "--cached", "--check", "--reverse", path)
    if rev.ok:
        pc.status = "merged"
        pc.detail = "already in the base (reverse-applies)"
        return pc
    if history:
        found = merged_by_patch_id(idx.repo, commit, patch)
        if found:
            pc.status = "merged"
            pc.detail = f"already in the base as {found[:12]}"
            return pc
    bak = idx.save()
    three = idx.git("apply", "--cached", "--3way", path)
    if three.ok:
        pc.status = "3way"
        pc.detail = "needs a 3-way merge"
        return pc
    idx.restore(bak)
    fuzz = idx.git("apply", "--cached", "-C1", path)
    if fuzz.ok:
        pc.status = "fuzz"
        pc.detail = "applies only with fuzz (reduced context)"
        return pc
    pc.detail = "; ".join(pc.hunks) or (plain_err.strip().splitlines() or ["does not apply"])[-1]
    return pc


def parse_bases(ws: Workspace, default_tree: str, bases: list[str]) -> list[tuple[str, str, str]]:
    """(as given, tree, ref) for each REF or TREE=REF."""
    out = []
    for b in bases:
        b = b.strip()
        if not b:
            continue
        if "=" in b:
            t, given_ref = tree_ref(b)
            ws.tree(t)
            ref = given_ref or ""
        elif b in ws.trees and ws.trees[b].kind == ws.tree(default_tree).kind:
            # A tree's name alone: that tree at its own base (linux-6.12 = its import).
            from kpatch_tool import trees as treesmod

            t, ref = b, treesmod.get(ws, b).ref
        else:
            t, ref = default_tree, b
        if not ref:
            raise UsageError(f"base '{b}': empty ref")
        out.append((b, t, ref))
    if not out:
        raise UsageError("no bases given (--onto REF1,REF2,...)")
    return out


def chain_patches(chain: list[Series], tree: str) -> list[tuple[str, Patch]]:
    return [(s.name, p) for s in chain if tree in s.trees for p in s.trees[tree].patches]


def open_tree(ws: Workspace, name: str) -> trees.Tree:
    # A no-op when the pinned version is there; fetches it otherwise.
    return trees.import_tree(ws, name)


def check_apply(ws: Workspace, name: str, bases: list[str], tree: str | None = None,
                progress=None) -> list[BaseReport]:
    chain = resolve_depends(ws, name)
    series = chain[-1]
    st = series.tree(tree)
    patches = chain_patches(chain, st.name)
    reports = []
    for given, tname, ref in parse_bases(ws, st.name, bases):
        t0 = time.monotonic()
        t = open_tree(ws, tname)
        commit = trees.resolve(t, ref)
        rep = BaseReport(given, tname, commit)
        probes = _patch_probes(chain, st.name)
        # One git grep per probe and base, however many patches the probe covers.
        present = {id(u): probe_state(t, commit, u) == "present" for us in probes.values() for u in us}
        with TempIndex(t.repo, commit) as idx:
            for i, (sname, p) in enumerate(patches):
                if progress:
                    progress(f"{given}: {p.file}", i, len(patches))
                found = [u for u in probes.get((sname, p.file), []) if present[id(u)]]
                if found:
                    # The base has the change in upstream's own form, which neither a reverse
                    # apply nor a patch-id finds when the patch was a backport of it.
                    rep.results.append(PatchCheck(sname, p.file, p.subject, "merged",
                                                  f"upstream: {found[0]['name']}"))
                    continue
                rep.results.append(try_patch(idx, commit, p, sname))
        rep.seconds = round(time.monotonic() - t0, 2)
        reports.append(rep)
    return reports


def reports_json(reports: list[BaseReport]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=1)


# Worst first: the one word a table cell shows for a series on a base.
_RANK = ["fails", "fuzz", "3way", "offset", "clean"]


def summarise(report: BaseReport) -> str:
    """One cell: clean / offset / 3way / fuzz / fails N / merged / merged k of n (+ the worst of the rest)."""
    n = len(report.results)
    if not n:
        return "no patches"
    merged = len(report.merged)
    if merged == n:
        return "merged"
    rest = [r.status for r in report.results if r.status != "merged"]
    worst = next(s for s in _RANK if s in rest)
    cell = f"fails {rest.count('fails')}" if worst == "fails" else worst
    return f"{cell}, merged {merged} of {n}" if merged else cell


def applicability(ws: Workspace, bases: list[str], tree: str = "linux", progress=None) -> list[dict]:
    """Every shipped series that has patches for `tree`, checked on every base: rows for a table."""
    from kpatch_tool.series import list_series

    rows = []
    for s in list_series(ws):
        if tree not in s.trees or not s.trees[tree].patches:
            continue
        reports = check_apply(ws, s.name, bases, tree, progress=progress)
        rows.append({"series": s.name, "patches": len(s.trees[tree].patches),
                     "bases": {r.base: summarise(r) for r in reports},
                     "reports": [r.to_json() for r in reports]})
    return rows


def applicability_all(ws: Workspace, progress=None) -> list[dict]:
    """Every series' patches, per kind of tree (linux, qemu, xen), on every tree of that kind.

    One row per (series, tree it patches); one column per tree of the same kind, each at its
    own base. So a Debian 12 series and its port to 7.2 both show how they fare on 6.1, 6.12
    and 7.2, and a QEMU 7.2 patch that upstream QEMU already has shows as merged there.
    """
    from kpatch_tool.series import list_series

    rows = []
    for s in list_series(ws):
        for tname, st in s.trees.items():
            if not st.patches or tname not in ws.trees:
                continue
            kind = ws.trees[tname].kind
            bases = [t for t, spec in ws.trees.items() if spec.kind == kind]
            reports = check_apply(ws, s.name, bases, tname, progress=progress)
            rows.append({"series": s.name, "tree": tname, "kind": kind, "patches": len(st.patches),
                         "bases": {r.base: summarise(r) for r in reports},
                         "reports": [r.to_json() for r in reports]})
    return rows


def upstream_probes(ws: Workspace, series, bases: list[str]) -> list[dict]:
    """Each [[upstream]] probe of the series (a fixed string in a file) on each base tree of its kind:
    present, absent, or no-file. Bases are tree names, each at its own pinned base."""
    out = []
    for u in series.upstream:
        if "file" not in u or u.get("tree") not in ws.trees:
            continue
        kind = ws.trees[u["tree"]].kind
        row = {"series": series.name, "name": u["name"], "kind": kind, "bases": {}}
        for b in bases:
            if b not in ws.trees or ws.trees[b].kind != kind:
                continue
            t = open_tree(ws, b)
            row["bases"][b] = probe_state(t, trees.resolve(t, t.ref), u)
        out.append(row)
    return out


def probe_state(t: trees.Tree, commit: str, u: dict) -> str:
    """An [[upstream]] probe on one commit: present, absent, or absent (no file)."""
    res = proc.run(["git", "--git-dir", str(t.repo), "grep", "-q", "-F", "-e", u["contains"], commit, "--",
                    u["file"]], timeout=120)
    if res.returncode == 0:
        return "present"
    exists = proc.run(["git", "--git-dir", str(t.repo), "cat-file", "-e", f"{commit}:{u['file']}"])
    return "absent" if exists.ok else "absent (no file)"


def _patch_probes(chain: list[Series], tree: str) -> dict[tuple[str, str], list[dict]]:
    """(series, patch file) -> the probes that say the patch is upstream where they are present."""
    out: dict[tuple[str, str], list[dict]] = {}
    for s in chain:
        for u in s.upstream:
            if u.get("tree") == tree and "file" in u:
                for f in u.get("patches", []):
                    out.setdefault((s.name, f), []).append(u)
    return out
