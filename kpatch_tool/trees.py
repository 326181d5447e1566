"""Trees: the Linux, QEMU and Xen sources, as git repositories.

A tree comes from a Debian binary package's tarball (`debian:linux-source-6.1`),
from a Debian source package (`debian-src:qemu`, Debian's patches applied), from
a local git repository (used in place, read-only to us) or from a git URL. A
Debian import is streamed into `git fast-import` straight from the tarball: no
work-tree round trip, no `git add` of 80,000 files. The repository is built
aside and renamed into the cache, and a stamp names what it was built from, so
an interrupted import is never trusted and an unchanged one is never redone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import git

from kpatch_tool import apt, proc, safefs
from kpatch_tool.errors import KptError, PrereqError, UsageError
from kpatch_tool.workspace import TreeSpec, Workspace

STAMP = "kpt-import.json"
IMPORT_BRANCH = "import"
AUTHOR = "kpatch-tool <kpt@localhost>"
URL_RE = re.compile(r"^(https?|git|ssh|file)://|^[\w.-]+@[\w.-]+:")


@dataclass
class Tree:
    name: str
    source: str
    kind: str
    repo: Path  # the git directory (bare for imports, the user's repo in place)
    in_place: bool  # a user's repository: never modified
    ref: str  # the default base: the import tag, or the user's HEAD
    commit: str | None
    version: str | None
    state: str  # imported, missing, in-place, dirty, stale (pinned version not imported), unpinned
    imports: dict = field(default_factory=dict)  # version -> tag, commit, artifact, sha256, suite
    ws: Workspace | None = field(default=None, repr=False, compare=False)

    def git(self) -> git.Repo:
        return git.Repo(self.repo)


# --------------------------------------------------------------------------
# fast-import writer


class FastImport:
    """A `git fast-import` process fed one blob at a time."""

    def __init__(self, git_dir: Path, log: Path | None = None):
        self._log = log
        # depth=0: no deltas against the previous, unrelated blob (fast-import's
        # default diffs every blob against the last one, which costs more than
        # it saves on a source tree). compression=1: the stream is CPU bound.
        self.proc = subprocess.Popen(
            ["git", "-c", "core.compression=1", "-c", "pack.compression=1",
             "fast-import", "--quiet", "--depth=0", "--done"],
            cwd=git_dir,
            env={**os.environ, "GIT_DIR": str(git_dir)},
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._w = self.proc.stdin
        self._mark = 0
        self.entries: list[tuple[str, str, int]] = []  # mode, path, mark

    def add(self, path: str, data: bytes, mode: str = "100644") -> None:
        self._mark += 1
        self._w.write(b"blob\nmark :%d\ndata %d\n" % (self._mark, len(data)))
        self._w.write(data)
        self._w.write(b"\n")
        self.entries.append((mode, path, self._mark))

    def commit(self, ref: str, message: str, when: int, parent: str | None = None) -> None:
        name, email = AUTHOR[:-1].split(" <")
        msg = message.encode()
        w = self._w
        w.write(b"commit %s\n" % ref.encode())
        for who in (b"author", b"committer"):
            w.write(b"%s %s <%s> %d +0000\n" % (who, name.encode(), email.encode(), when))
        w.write(b"data %d\n%s\n" % (len(msg), msg))
        if parent:
            # The files are listed in full below: start from nothing, not from the parent's tree.
            w.write(b"from %s\ndeleteall\n" % parent.encode())
        # Sorted: the same tree gives the same stream, whatever order tar had.
        for mode, path, mark in sorted(self.entries, key=lambda e: e[1]):
            w.write(b"M %s :%d %s\n" % (mode.encode(), mark, _quote(path)))
        w.write(b"\n")

    def close(self) -> None:
        try:
            self._w.write(b"done\n")
            self._w.close()
        except BrokenPipeError:
            pass
        err = self.proc.stderr.read().decode("utf-8", "replace")
        rc = self.proc.wait()
        if self._log:
            self._log.write_text(err)
        if rc != 0:
            if "No space left" in err:
                raise UsageError(f"no space left on device while importing (git fast-import): {err.strip()[:200]}")
            raise KptError(f"git fast-import failed (exit {rc}): {err.strip()[:300]}")

    def abort(self) -> None:
        _kill(self.proc)


def _quote(path: str) -> bytes:
    b = path.encode("utf-8", "surrogateescape")
    if b.startswith(b'"') or b"\n" in b or b"\\" in b or b'"' in b:
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\n", b"\\n") + b'"'
    return b


def neutralise_debian_gitignore(data: bytes) -> bytes:
    """Drop Debian's top-level ignore-everything block (`/*` + `!/debian/`).

    With it a worktree ignores every new top-level file and a plain `git add -A`
    adds nothing; the rest of the kernel's .gitignore stays as upstream has it.
    """
    lines = data.split(b"\n")
    if b"/*" not in lines or b"!/debian/" not in lines:
        return data
    return b"\n".join(l for l in lines if l not in (b"/*", b"!/debian/"))


def _tar_stream_into(fi: FastImport, tarball: Path) -> tuple[int, int]:
    """Feed every member of a .tar.xz to fast-import; returns (files, max mtime)."""
    # xz in its own process: decompression runs on the other core.
    xz = subprocess.Popen(["xz", "-dc", str(tarball)], stdout=subprocess.PIPE, start_new_session=True)
    count = 0
    newest = 0
    try:
        with tarfile.open(fileobj=xz.stdout, mode="r|") as tf:
            for m in tf:
                parts = m.name.split("/", 1)
                if len(parts) < 2 or not parts[1]:
                    continue
                path = parts[1].rstrip("/")
                newest = max(newest, int(m.mtime))
                if m.isreg():
                    data = tf.extractfile(m).read()
                    if path == ".gitignore":
                        data = neutralise_debian_gitignore(data)
                    fi.add(path, data, "100755" if m.mode & 0o111 else "100644")
                    count += 1
                elif m.issym():
                    fi.add(path, m.linkname.encode(), "120000")
                    count += 1
    finally:
        xz.stdout.close()
        if xz.wait() != 0:
            raise KptError(f"{tarball}: xz could not decompress it (exit {xz.returncode})")
    return count, newest


def walk_files(top: Path, skip: tuple[str, ...] = (".pc", ".git")):
    """(path relative to top, absolute path, lstat) of every file and symlink under top, as git
    sees a tree: a symlink to a folder is a file; top-level names in skip are left out."""
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                filenames.append(d)
                dirnames.remove(d)
        for f in filenames:
            p = os.path.join(dirpath, f)
            yield (f if rel == "." else f"{rel}/{f}"), p, os.lstat(p)


def _dir_into(fi: FastImport, top: Path, skip: tuple[str, ...] = (".pc", ".git")) -> tuple[int, int]:
    count = 0
    newest = 0
    for path, p, st in walk_files(top, skip):
        newest = max(newest, int(st.st_mtime))
        if stat.S_ISLNK(st.st_mode):
            fi.add(path, os.readlink(p).encode(), "120000")
        else:
            with open(p, "rb") as fh:
                fi.add(path, fh.read(), "100755" if st.st_mode & 0o111 else "100644")
        count += 1
    return count, newest


# --------------------------------------------------------------------------
# sources


def version_tag(version: str) -> str:
    """A Debian version as a git tag name (DEP-14: '~' -> '_'; the epoch is not part of it)."""
    return "debian/" + apt.noepoch(version).replace(":", "%").replace("~", "_")


def upstream_version(version: str) -> str:
    """The upstream part of a Debian version: no epoch, no Debian revision (`1:7.2+dfsg-7` -> `7.2+dfsg`)."""
    v = apt.noepoch(version)
    return v.rsplit("-", 1)[0] if "-" in v else v


def upstream_tag(version: str) -> str:
    """The tag of a version's orig tree (DEP-14's `upstream/VERSION`, mangled as version_tag)."""
    return "upstream/" + upstream_version(version).replace(":", "%").replace("~", "_")


def tag_version(ref: str) -> str | None:
    """The Debian version a `debian/...` tag names (None for any other ref)."""
    if not ref.startswith("debian/"):
        return None
    return ref[len("debian/"):].replace("%", ":").replace("_", "~")


def source_kind(source: str) -> str:
    if source.startswith("debian:"):
        return "debian"
    if source.startswith("debian-src:"):
        return "debian-src"
    if URL_RE.match(source):
        return "url"
    return "path"


def _stamp(repo: Path) -> dict | None:
    """The repository's import record; the one-import layout of older kpt is read as a list of one."""
    try:
        data = json.loads((repo / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if "imports" not in data:
        imports = {}
        if data.get("version") and data.get("commit"):
            ident = data.get("identity") or {}
            imports[data["version"]] = {"tag": data.get("tag"), "commit": data["commit"], "sha256": None,
                                        "suite": None, "artifact": (ident.get("tarball") or {}).get("path"),
                                        "files": data.get("files"), "imported": data.get("imported")}
        data = {"format": 2, "source": (data.get("identity") or {}).get("source"), "imports": imports,
                "identity": data.get("identity"), "commit": data.get("commit")}
    return data


def _write_stamp(repo: Path, stamp: dict) -> None:
    safefs.replace_file(repo / STAMP, json.dumps(stamp, indent=1).encode())


def _fresh_repo(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent))
    proc.run(["git", "init", "-q", "--bare", "-b", IMPORT_BRANCH, str(tmp)], check=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        raise UsageError(f"{final} exists and kpt did not make it (no {STAMP}); move it away and import again")
    os.rename(tmp, final)


def _clean_leftovers(parent: Path, name: str) -> None:
    if not parent.is_dir():
        return
    for p in parent.glob(f".tmp-{name}-*"):
        # Only kpt's own half-made repositories: a bare repo with no stamp yet.
        if (p / "HEAD").exists() or not any(p.iterdir()):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _tree_lock(ws: Workspace, name: str):
    """One import into a tree's repository at a time (two kpt processes, one cache)."""
    ws.trees_dir.mkdir(parents=True, exist_ok=True)
    with open(ws.trees_dir / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def archive(ws: Workspace, name: str) -> apt.Archive:
    """kpt's apt view for one tree: [apt] suites plus the tree's own. Each set of suites has
    an apt state of its own, so a suite that cannot be read (sid's Release expired on a
    snapshot mirror, say) breaks only the trees that need it."""
    return apt.Archive(ws.cache_dir, ws.data.get("apt") or {}, tuple(ws.tree(name).suites))


def repo_path(ws: Workspace, name: str) -> Path:
    spec = ws.tree(name)
    if source_kind(spec.source) == "path":
        return Path(os.path.expanduser(spec.source)).resolve()
    return ws.trees_dir / name


def _has_ref(repo: Path, ref: str) -> bool:
    return proc.run(["git", "--git-dir", str(repo), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"]).ok


def get(ws: Workspace, name: str) -> Tree:
    """The tree as it stands now (no work done)."""
    spec = ws.tree(name)
    kind = source_kind(spec.source)
    repo = repo_path(ws, name)
    if kind == "path":
        if not repo.exists():
            return Tree(name, spec.source, spec.kind, repo, True, "HEAD", None, None, "missing", ws=ws)
        try:
            r = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return Tree(name, spec.source, spec.kind, repo, True, "HEAD", None, None, "not-a-repo", ws=ws)
        try:
            commit = r.head.commit.hexsha
        except ValueError:
            commit = None
        dirty = not r.bare and r.is_dirty(untracked_files=False)
        gitdir = Path(r.git_dir)
        return Tree(name, spec.source, spec.kind, gitdir, True, "HEAD", commit, None,
                    "dirty" if dirty else "in-place", ws=ws)
    stamp = _stamp(repo)
    if not stamp:
        return Tree(name, spec.source, spec.kind, repo, False, IMPORT_BRANCH, None, spec.version,
                    "missing" if not repo.exists() else "incomplete", ws=ws)
    imports = stamp.get("imports") or {}
    if kind == "url":
        return Tree(name, spec.source, spec.kind, repo, False, IMPORT_BRANCH, stamp.get("commit"), None,
                    "imported", imports, ws=ws)
    if not spec.version:
        return Tree(name, spec.source, spec.kind, repo, False, IMPORT_BRANCH, None, None, "unpinned", imports, ws=ws)
    entry = imports.get(spec.version) or imports.get(apt.noepoch(spec.version))
    if not entry:
        return Tree(name, spec.source, spec.kind, repo, False, version_tag(spec.version), None, spec.version,
                    "stale", imports, ws=ws)
    return Tree(name, spec.source, spec.kind, repo, False, entry.get("tag") or version_tag(spec.version),
                entry.get("commit"), spec.version, "imported", imports, ws=ws)


def import_tree(ws: Workspace, name: str, *, progress=None, update: bool = False) -> Tree:
    """Make the tree's git repository hold its pinned version; a no-op when it does."""
    spec = ws.tree(name)
    kind = source_kind(spec.source)
    say = progress or (lambda msg: None)
    if kind == "path":
        tree = get(ws, name)
        if tree.state == "missing":
            raise UsageError(f"tree '{name}': {spec.source} does not exist")
        if tree.state == "not-a-repo":
            raise UsageError(f"tree '{name}': {spec.source} is not a git repository (run `git init` there, or point kpt.toml at a repository)")
        if tree.commit is None:
            raise UsageError(f"tree '{name}': {spec.source} has no commits")
        if tree.state == "dirty":
            say(f"tree '{name}': {spec.source} has uncommitted changes; kpt works from commits only and leaves them alone")
        return tree
    final = ws.trees_dir / name
    if kind == "url":
        _clean_leftovers(ws.trees_dir, name)
        if final.exists() and not _stamp(final):
            raise UsageError(f"tree '{name}': {final} exists and kpt did not make it (no {STAMP}); move it away and import again")
        return _import_url(ws, spec, final, update, say)
    if not spec.version:
        raise UsageError(f"{ws.root / 'kpt.toml'}: [trees.{name}] has no version; pin one "
                         f"(`kpt tree update {name}` pins the newest the archive offers)")
    import_version(ws, name, spec.version, progress=progress)
    return get(ws, name)


def _ensure_repo(ws: Workspace, name: str, source: str) -> Path:
    final = ws.trees_dir / name
    _clean_leftovers(ws.trees_dir, name)
    if final.exists():
        if _stamp(final) is None:
            raise UsageError(f"tree '{name}': {final} exists and kpt did not make it (no {STAMP}); move it away and import again")
        return final
    tmp = _fresh_repo(ws.trees_dir, name)
    _write_stamp(tmp, {"format": 2, "source": source, "imports": {}})
    _publish(tmp, final)
    return final


def _parent_for(repo: Path, imports: dict, version: str) -> str | None:
    """The newest imported version older than this one: its commit is the new one's parent."""
    older = [v for v in imports if apt.compare_versions(v, version) < 0 and imports[v].get("commit")]
    if not older:
        return None
    best = older[0]
    for v in older[1:]:
        if apt.compare_versions(v, best) > 0:
            best = v
    commit = imports[best]["commit"]
    return commit if _has_ref(repo, commit) else None


def import_version(ws: Workspace, name: str, version: str, *, progress=None) -> dict:
    """Fetch exactly this version from Debian's archive and add it to the tree's repository.

    Earlier imports stay: each version is a commit with its tag, a child of the
    newest older one, so `git diff debian/A debian/B` is what Debian changed.
    """
    spec = ws.tree(name)
    kind = source_kind(spec.source)
    if kind not in ("debian", "debian-src"):
        raise UsageError(f"tree '{name}': {spec.source} is not a Debian package; it has no versions to fetch")
    package = spec.source.split(":", 1)[1]
    say = progress or (lambda msg: None)
    from kpatch_tool import prereqs

    prereqs.require("import")
    with _tree_lock(ws, name):
        repo = _ensure_repo(ws, name, spec.source)
        stamp = _stamp(repo)
        imports = stamp.setdefault("imports", {})
        for v in (version, apt.noepoch(version)):
            e = imports.get(v)
            if e and _has_ref(repo, e.get("commit") or "-"):
                _point_import_branch(ws, spec, repo, imports)
                return e
        arch = archive(ws, name)
        pool = ws.cache_dir / "debian" / ("pool" if kind == "debian" else f"src/{package}_{apt.noepoch(version)}")
        try:
            if kind == "debian":
                fetched = arch.fetch_deb(package, version, pool, progress=say)
            else:
                fetched = arch.fetch_source(package, version, pool, progress=say)
        except apt.VersionGone as gone:
            if version != spec.version or not gone.offered:
                raise  # a series' base: resolve() names the series' way out
            raise PrereqError(f"tree '{name}': {gone.message}; `kpt tree update {name}` moves the pin "
                              f"to {gone.offered[0].version}") from None
        tag = version_tag(fetched.version)
        parent = _parent_for(repo, imports, fetched.version)
        t0 = time.monotonic()
        if kind == "debian":
            count, commit = _import_deb(ws, repo, package, fetched, tag, parent, say)
        else:
            count, commit = _import_dsc(ws, repo, package, fetched, tag, parent, say)
        entry = {"tag": tag, "commit": commit, "parent": parent, "artifact": str(fetched.path),
                 "sha256": fetched.sha256, "suite": fetched.suite, "files": count,
                 "seconds": round(time.monotonic() - t0, 1), "imported": int(time.time())}
        imports[apt.noepoch(fetched.version)] = entry
        _write_stamp(repo, stamp)
        _point_import_branch(ws, spec, repo, imports)
        return entry


def _point_import_branch(ws: Workspace, spec: TreeSpec, repo: Path, imports: dict) -> None:
    """`import` is the pinned version (what `kpt tree path` and unpinned series use)."""
    e = imports.get(apt.noepoch(spec.version or "")) if spec.version else None
    if e and e.get("commit"):
        proc.run(["git", "--git-dir", str(repo), "update-ref", f"refs/heads/{IMPORT_BRANCH}", e["commit"]], check=True)


def _fast_import(repo: Path, message: str, feed, tag: str, parent: str | None) -> tuple[int, str]:
    """Run fast-import into a scratch ref, then publish the commit as the tag."""
    scratch = "refs/kpt/importing"
    # A scratch ref left by a killed import would make fast-import refuse (not a fast-forward).
    proc.run(["git", "--git-dir", str(repo), "update-ref", "-d", scratch])
    fi = FastImport(repo)
    try:
        count, newest = feed(fi)
        fi.commit(scratch, message, newest, parent=parent)
        fi.close()
    except OSError as exc:
        fi.abort()
        if exc.errno == errno.ENOSPC:
            raise UsageError(f"no space left on {repo} while importing {tag}") from None
        raise
    except BaseException:
        fi.abort()
        raise
    commit = proc.run(["git", "--git-dir", str(repo), "rev-parse", f"{scratch}^{{commit}}"], check=True).stdout.strip()
    proc.run(["git", "--git-dir", str(repo), "update-ref", f"refs/tags/{tag}", commit], check=True)
    proc.run(["git", "--git-dir", str(repo), "update-ref", "-d", scratch], check=True)
    return count, commit


def _import_deb(ws, repo: Path, package: str, fetched: apt.Fetched, tag: str, parent: str | None, say) -> tuple[int, str]:
    proc.require("dpkg-deb", "dpkg")
    with tempfile.TemporaryDirectory(prefix=".deb-", dir=ws.trees_dir) as tmpd:
        tarball = _tarball_from_deb(fetched.path, package, Path(tmpd))
        say(f"importing {fetched.path.name} ({fetched.version}, {fetched.suite}) into {repo}")
        message = (f"Import {package} {fetched.version}\n\nFrom {fetched.path.name} (sha256 {fetched.sha256},\n"
                   f"{fetched.suite}) by kpatch-tool; Debian's top-level ignore-everything\n"
                   f"block in .gitignore dropped so new files show up.\n")
        return _fast_import(repo, message, lambda fi: _tar_stream_into(fi, tarball), tag, parent)


def _tarball_from_deb(deb: Path, package: str, into: Path) -> Path:
    """The source tarball a linux-source-style .deb carries in /usr/src."""
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, start_new_session=True)
    found = None
    try:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            for m in tf:
                base = m.name.lstrip("./")
                if m.isreg() and base.startswith(f"usr/src/{package}.tar."):
                    found = into / Path(base).name
                    with open(found, "wb") as out:
                        shutil.copyfileobj(tf.extractfile(m), out, 1 << 20)
                    break
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UsageError(f"no space left on {into} while unpacking {deb.name}") from None
        raise
    finally:
        p.stdout.close()
        _kill(p)
    if found is None:
        raise UsageError(f"{deb.name}: holds no /usr/src/{package}.tar.* (not a source-tarball package)")
    return found


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
    p.wait()


def _import_dsc(ws, repo: Path, package: str, fetched: apt.Fetched, tag: str, parent: str | None, say) -> tuple[int, str]:
    proc.require("dpkg-source", "dpkg-dev")
    with tempfile.TemporaryDirectory(prefix=".src-", dir=ws.trees_dir) as tmpd:
        src = Path(tmpd) / "src"
        say(f"unpacking {fetched.path.name} with Debian's patches applied")
        res = proc.run(["dpkg-source", "--no-check", "-x", str(fetched.path), str(src)], cwd=tmpd, timeout=1800,
                       log=Path(tmpd) / "dpkg-source.log")
        if not res.ok:
            last = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
            raise UsageError(f"{fetched.path}: dpkg-source -x failed: {last}")
        message = (f"Import Debian source {package} {fetched.version}\n\nFrom {fetched.path.name} (sha256 {fetched.sha256},\n"
                   f"{fetched.suite}), unpacked by dpkg-source with Debian's patches applied.\n")
        return _fast_import(repo, message, lambda fi: _dir_into(fi, src), tag, parent)


def import_orig(ws: Workspace, name: str, version: str, *, progress=None) -> dict:
    """The orig tree of a Debian source version: its orig tarball(s), no Debian patch applied, no debian/.

    A commit of its own (no parent) tagged `upstream/UPSTREAM` beside the version's
    `debian/VERSION` import (dpkg-source -x, patches applied), recorded in that
    version's stamp entry as `orig`. It is what Debian's own patch series applies to.
    """
    spec = ws.tree(name)
    if source_kind(spec.source) != "debian-src":
        raise UsageError(f"tree '{name}': {spec.source} is not a Debian source package (debian-src:); it has no orig tree")
    entry = import_version(ws, name, version, progress=progress)
    say = progress or (lambda msg: None)
    with _tree_lock(ws, name):
        repo = ws.trees_dir / name
        stamp = _stamp(repo)
        key = next(v for v, e in stamp["imports"].items() if e.get("commit") == entry["commit"])
        entry = stamp["imports"][key]
        orig = entry.get("orig") or {}
        if orig.get("commit") and _has_ref(repo, orig["commit"]):
            return orig
        dsc = Path(entry["artifact"])
        if not dsc.is_file():
            raise PrereqError(f"tree '{name}': {dsc} is gone from kpt's cache; `kpt tree import {name} "
                              f"--version {key}` cannot redo it either: move the tree's repository away and import again")
        tag = upstream_tag(key)
        proc.require("dpkg-source", "dpkg-dev")
        with tempfile.TemporaryDirectory(prefix=".orig-", dir=ws.trees_dir) as tmpd:
            src = Path(tmpd) / "src"
            say(f"unpacking the orig tree of {dsc.name} (no Debian patch applied)")
            res = proc.run(["dpkg-source", "--no-check", "--skip-patches", "-x", str(dsc), str(src)], cwd=tmpd,
                           timeout=1800, log=Path(tmpd) / "dpkg-source.log")
            if not res.ok:
                last = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
                raise UsageError(f"{dsc}: dpkg-source -x --skip-patches failed: {last}")
            message = (f"Import the orig tree of Debian source {spec.source.split(':', 1)[1]} "
                       f"{upstream_version(key)}\n\nFrom {dsc.name}'s orig tarball(s), unpacked by dpkg-source "
                       f"without Debian's\npatches and without debian/.\n")
            t0 = time.monotonic()
            count, commit = _fast_import(repo, message, lambda fi: _dir_into(fi, src, (".pc", ".git", "debian")),
                                         tag, None)
        orig = {"tag": tag, "commit": commit, "files": count, "seconds": round(time.monotonic() - t0, 1)}
        entry["orig"] = orig
        _write_stamp(repo, stamp)
        return orig


def _import_url(ws: Workspace, spec: TreeSpec, final: Path, update: bool, say) -> Tree:
    if _stamp(final):
        if update:
            proc.run(["git", "--git-dir", str(final), "fetch", "--prune", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                     timeout=3600, check=True)
        return get(ws, spec.name)
    ws.trees_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=ws.trees_dir))
    say(f"cloning {spec.source}")
    res = proc.run(["git", "clone", "-q", "--bare", "--", spec.source, str(tmp)], timeout=3600)
    if not res.ok:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(f"tree '{spec.name}': cannot clone {spec.source}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'failed'}")
    head = proc.run(["git", "--git-dir", str(tmp), "rev-parse", "HEAD"], check=True).stdout.strip()
    proc.run(["git", "--git-dir", str(tmp), "branch", "-f", IMPORT_BRANCH, head], check=True)
    _write_stamp(tmp, {"format": 2, "source": spec.source, "imports": {}, "commit": head, "imported": int(time.time())})
    _publish(tmp, final)
    return get(ws, spec.name)


# --------------------------------------------------------------------------
# checkouts of a base commit, shared by config/build when no series is applied


def resolve(tree: Tree, ref: str | None = None) -> str:
    """The commit of ref in the tree; a Debian version tag not imported yet is fetched."""
    ref = ref or tree.ref
    res = proc.run(["git", "--git-dir", str(tree.repo), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"])
    if res.ok:
        return res.stdout.strip()
    if ref.startswith("upstream/") and tree.ws is not None and source_kind(tree.source) == "debian-src":
        for v in [*(tree.imports or {}), *([tree.version] if tree.version else [])]:
            if upstream_tag(v) == ref:
                return import_orig(tree.ws, tree.name, v)["commit"]
        raise UsageError(f"tree '{tree.name}': no ref '{ref}' (the orig tree of a Debian version is made by "
                         f"`kpt series import --debian-src PACKAGE=VERSION --tree {tree.name}`)")
    version = tag_version(ref)
    if version and tree.ws is not None and source_kind(tree.source) in ("debian", "debian-src"):
        try:
            entry = import_version(tree.ws, tree.name, version)
        except apt.VersionGone as gone:
            raise PrereqError(
                f"tree '{tree.name}': base {ref} is not imported and the archive no longer offers {version}; "
                f"imported: {', '.join(sorted(tree.imports)) or 'none'}; archive: "
                f"{', '.join(o.version for o in gone.offered[:6]) or 'none'}; "
                f"`kpt tree update {tree.name}` moves the series to a version it offers") from None
        return entry["commit"]
    held = ", ".join(version_tag(v) for v in sorted(tree.imports)) if tree.imports else ""
    hint = f"the tree holds {held}" if held else f"try `git --git-dir {tree.repo} tag -l`"
    if tree.ws is not None and source_kind(tree.source) in ("debian", "debian-src") and not version:
        hint += f"; a Debian version is named as debian/VERSION and fetched by `kpt tree import {tree.name} --version VERSION`"
    raise UsageError(f"tree '{tree.name}': no ref '{ref}' ({hint})")


def checkout(ws: Workspace, name: str, ref: str | None = None, *, progress=None) -> Path:
    """A read-only worktree of ref (detached), made once per commit and reused."""
    tree = get(ws, name)
    if tree.state in ("missing", "incomplete", "not-a-repo", "stale", "unpinned"):
        tree = import_tree(ws, name, progress=progress)
    sha = resolve(tree, ref)
    base = ws.cache_dir / "worktrees" / name
    path = base / sha[:12]
    ok = base / f"{sha[:12]}.ok"
    if ok.exists() and path.is_dir():
        return path
    base.mkdir(parents=True, exist_ok=True)
    if path.exists():
        # Interrupted before it was marked complete: never trust it.
        proc.run(["git", "--git-dir", str(tree.repo), "worktree", "remove", "--force", str(path)])
        shutil.rmtree(path, ignore_errors=True)
    # No `git worktree prune`: in a user's own repository it would drop their worktrees on
    # unmounted disks. --force re-adds our path if it is registered but gone.
    if progress:
        progress(f"checking out {name} {sha[:12]} into {path}")
    proc.run(["git", "--git-dir", str(tree.repo), "-c", "checkout.workers=0",
              "worktree", "add", "-q", "--force", "--detach", str(path), sha],
             timeout=1800, check=True)
    ok.write_text(sha + "\n")
    return path


def origin_of(tree: Tree, commit: str) -> dict:
    """What Debian artifact a commit of the tree was imported from (for manifests)."""
    for version, e in tree.imports.items():
        if e.get("commit") == commit:
            return {"debian_version": version, "artifact": e.get("artifact"), "sha256": e.get("sha256"),
                    "suite": e.get("suite")}
    for version, e in tree.imports.items():
        if (e.get("orig") or {}).get("commit") == commit:
            return {"debian_version": version, "orig": True, "artifact": e.get("artifact"),
                    "sha256": e.get("sha256"), "suite": e.get("suite")}
    return {}


def list_trees(ws: Workspace) -> list[Tree]:
    return [get(ws, n) for n in ws.trees]
