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
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import git

from kpatch_tool import proc
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
    state: str  # imported, missing, in-place, dirty, stale

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

    def commit(self, ref: str, message: str, when: int, tag: str | None = None) -> None:
        name, email = AUTHOR[:-1].split(" <")
        msg = message.encode()
        w = self._w
        w.write(b"commit %s\n" % ref.encode())
        for who in (b"author", b"committer"):
            w.write(b"%s %s <%s> %d +0000\n" % (who, name.encode(), email.encode(), when))
        w.write(b"data %d\n%s\n" % (len(msg), msg))
        # Sorted: the same tree gives the same stream, whatever order tar had.
        for mode, path, mark in sorted(self.entries, key=lambda e: e[1]):
            w.write(b"M %s :%d %s\n" % (mode.encode(), mark, _quote(path)))
        w.write(b"\n")
        if tag:
            t = f"tag {tag}\nfrom {ref}\ntagger {AUTHOR} {when} +0000\ndata 0\n\n"
            w.write(t.encode())

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
                raise KptError(f"no space left on device while importing (git fast-import): {err.strip()[:200]}")
            raise KptError(f"git fast-import failed (exit {rc}): {err.strip()[:300]}")

    def abort(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()


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


def _dir_into(fi: FastImport, top: Path, skip: tuple[str, ...] = (".pc", ".git")) -> tuple[int, int]:
    count = 0
    newest = 0
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for d in list(dirnames):
            p = os.path.join(dirpath, d)
            if os.path.islink(p):
                filenames.append(d)
                dirnames.remove(d)
        for f in filenames:
            p = os.path.join(dirpath, f)
            path = f if rel == "." else f"{rel}/{f}"
            st = os.lstat(p)
            newest = max(newest, int(st.st_mtime))
            if os.path.islink(p):
                fi.add(path, os.readlink(p).encode(), "120000")
            else:
                with open(p, "rb") as fh:
                    fi.add(path, fh.read(), "100755" if st.st_mode & 0o111 else "100644")
            count += 1
    return count, newest


# --------------------------------------------------------------------------
# sources


def _dpkg_version(package: str) -> str | None:
    res = proc.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], timeout=30)
    if res.returncode == 0 and res.stdout.startswith("install ok installed"):
        return res.stdout.split()[-1]
    return None


def _apt_knows(package: str) -> bool:
    res = proc.run(["apt-cache", "show", "--no-all-versions", package], timeout=60)
    return res.returncode == 0 and "Package:" in res.stdout


def version_tag(version: str) -> str:
    """A Debian version as a git tag name (DEP-14: ':' -> '%', '~' -> '_')."""
    return "debian/" + version.replace(":", "%").replace("~", "_")


def _source_kind(source: str) -> str:
    if source.startswith("debian:"):
        return "debian"
    if source.startswith("debian-src:"):
        return "debian-src"
    if URL_RE.match(source):
        return "url"
    return "path"


def _stamp(repo: Path) -> dict | None:
    try:
        return json.loads((repo / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _tarball_identity(tarball: Path) -> dict:
    st = tarball.stat()
    return {"path": str(tarball), "size": st.st_size, "mtime": int(st.st_mtime)}


def _fresh_repo(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent))
    proc.run(["git", "init", "-q", "--bare", "-b", IMPORT_BRANCH, str(tmp)], check=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _clean_leftovers(parent: Path, name: str) -> None:
    if not parent.is_dir():
        return
    for p in parent.glob(f".tmp-{name}-*"):
        shutil.rmtree(p, ignore_errors=True)


def repo_path(ws: Workspace, name: str) -> Path:
    spec = ws.tree(name)
    if _source_kind(spec.source) == "path":
        return Path(os.path.expanduser(spec.source)).resolve()
    return ws.trees_dir / name


def get(ws: Workspace, name: str) -> Tree:
    """The tree as it stands now (no work done)."""
    spec = ws.tree(name)
    kind = _source_kind(spec.source)
    repo = repo_path(ws, name)
    if kind == "path":
        if not repo.exists():
            return Tree(name, spec.source, spec.kind, repo, True, "HEAD", None, None, "missing")
        try:
            r = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return Tree(name, spec.source, spec.kind, repo, True, "HEAD", None, None, "not-a-repo")
        try:
            commit = r.head.commit.hexsha
        except ValueError:
            commit = None
        dirty = not r.bare and r.is_dirty(untracked_files=False)
        gitdir = Path(r.git_dir)
        return Tree(name, spec.source, spec.kind, gitdir, True, "HEAD", commit, None,
                    "dirty" if dirty else "in-place")
    stamp = _stamp(repo)
    if not stamp:
        return Tree(name, spec.source, spec.kind, repo, False, IMPORT_BRANCH, None, None,
                    "missing" if not repo.exists() else "incomplete")
    return Tree(name, spec.source, spec.kind, repo, False, stamp.get("tag") or IMPORT_BRANCH,
                stamp.get("commit"), stamp.get("version"), "imported")


def import_tree(ws: Workspace, name: str, *, progress=None, update: bool = False) -> Tree:
    """Make the tree's git repository exist; a no-op when it is up to date."""
    spec = ws.tree(name)
    kind = _source_kind(spec.source)
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
    _clean_leftovers(ws.trees_dir, name)
    if final.exists() and not _stamp(final):
        say(f"tree '{name}': {final} was left half-written by an earlier import; importing again")
        shutil.rmtree(final)
    if kind == "url":
        return _import_url(ws, spec, final, update, say)
    if kind == "debian":
        return _import_debian(ws, spec, final, say)
    return _import_debian_src(ws, spec, final, say)


def _import_debian(ws: Workspace, spec: TreeSpec, final: Path, say) -> Tree:
    package = spec.source.split(":", 1)[1]
    version = _dpkg_version(package)
    if version is None:
        if _apt_knows(package):
            raise PrereqError(f"tree '{spec.name}': Debian package {package} is not installed (apt-get install {package})")
        raise UsageError(f"tree '{spec.name}': no Debian package named '{package}' (check kpt.toml; `apt-cache search linux-source`)")
    tarballs = sorted(Path("/usr/src").glob(f"{package}.tar.*"))
    if not tarballs:
        raise PrereqError(f"tree '{spec.name}': {package} is installed but /usr/src/{package}.tar.* is missing (apt-get install --reinstall {package})")
    tarball = tarballs[0]
    ident = {"source": spec.source, "version": version, "tarball": _tarball_identity(tarball)}
    stamp = _stamp(final)
    if stamp and stamp.get("identity") == ident:
        return get(ws, spec.name)
    say(f"importing {tarball} ({version}) into {final}")
    tmp = _fresh_repo(ws.trees_dir, spec.name)
    t0 = time.monotonic()
    fi = FastImport(tmp)
    try:
        count, newest = _tar_stream_into(fi, tarball)
        tag = version_tag(version)
        fi.commit(f"refs/heads/{IMPORT_BRANCH}",
                  f"Import {package} {version}\n\nFrom {tarball} by kpatch-tool; Debian's top-level\n"
                  f"ignore-everything block in .gitignore dropped so new files show up.\n",
                  newest, tag=tag)
        fi.close()
    except OSError as exc:
        fi.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise KptError(f"no space left under {ws.trees_dir} while importing {package}") from None
        raise
    except BaseException:
        fi.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(ws, spec, tmp, final, ident, version, tag, count, time.monotonic() - t0)


def _finish(ws, spec, tmp, final, ident, version, tag, count, seconds) -> Tree:
    commit = proc.run(["git", "--git-dir", str(tmp), "rev-parse", f"{IMPORT_BRANCH}^{{commit}}"], check=True).stdout.strip()
    stamp = {"identity": ident, "version": version, "tag": tag, "commit": commit,
             "files": count, "seconds": round(seconds, 1), "imported": int(time.time())}
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
    _publish(tmp, final)
    return get(ws, spec.name)


def _import_debian_src(ws: Workspace, spec: TreeSpec, final: Path, say) -> Tree:
    package = spec.source.split(":", 1)[1]
    want = f"{package}={spec.version}" if spec.version else package
    stamp = _stamp(final)
    if stamp and stamp.get("identity", {}).get("want") == want:
        return get(ws, spec.name)
    proc.require("dpkg-source", "dpkg-dev")
    work = Path(tempfile.mkdtemp(prefix=f".src-{spec.name}-", dir=ws.trees_dir.parent if ws.trees_dir.parent.exists() else None))
    log = work / "apt-get-source.log"
    try:
        say(f"downloading the Debian source of {want}")
        res = proc.run(["apt-get", "source", "--download-only", want], cwd=work, timeout=1800, log=log)
        if not res.ok:
            msg = (res.stderr or res.stdout).strip().splitlines()
            last = msg[-1] if msg else "no output"
            if "deb-src" in res.stderr or "You must put some 'deb-src'" in res.stderr:
                raise PrereqError(f"tree '{spec.name}': apt has no deb-src entries (run scripts/setup.sh as root)")
            raise UsageError(f"tree '{spec.name}': `apt-get source {want}` failed: {last}")
        dscs = sorted(work.glob("*.dsc"))
        if not dscs:
            raise UsageError(f"tree '{spec.name}': apt-get source {want} gave no .dsc")
        dsc = dscs[0]
        version = dsc.stem.split("_", 1)[1]
        src = work / "src"
        say(f"unpacking {dsc.name} with Debian's patches applied")
        proc.run(["dpkg-source", "--no-check", "-x", dsc.name, str(src)], cwd=work, timeout=1800, log=log, check=True)
        tmp = _fresh_repo(ws.trees_dir, spec.name)
        t0 = time.monotonic()
        fi = FastImport(tmp)
        try:
            count, newest = _dir_into(fi, src)
            tag = version_tag(version)
            fi.commit(f"refs/heads/{IMPORT_BRANCH}",
                      f"Import Debian source {package} {version}\n\nUnpacked by dpkg-source with Debian's patches applied.\n",
                      newest, tag=tag)
            fi.close()
        except BaseException:
            fi.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ident = {"source": spec.source, "want": want, "version": version}
        return _finish(ws, spec, tmp, final, ident, version, tag, count, time.monotonic() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import_url(ws: Workspace, spec: TreeSpec, final: Path, update: bool, say) -> Tree:
    if _stamp(final):
        if update:
            proc.run(["git", "--git-dir", str(final), "fetch", "--prune", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                     timeout=3600, check=True)
        return get(ws, spec.name)
    ws.trees_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=ws.trees_dir))
    say(f"cloning {spec.source}")
    res = proc.run(["git", "clone", "-q", "--bare", spec.source, str(tmp)], timeout=3600)
    if not res.ok:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(f"tree '{spec.name}': cannot clone {spec.source}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'failed'}")
    head = proc.run(["git", "--git-dir", str(tmp), "rev-parse", "HEAD"], check=True).stdout.strip()
    proc.run(["git", "--git-dir", str(tmp), "branch", "-f", IMPORT_BRANCH, head], check=True)
    ident = {"source": spec.source}
    return _finish(ws, spec, tmp, final, ident, None, None, 0, 0.0)


# --------------------------------------------------------------------------
# checkouts of a base commit, shared by config/build when no series is applied


def resolve(tree: Tree, ref: str | None = None) -> str:
    ref = ref or tree.ref
    res = proc.run(["git", "--git-dir", str(tree.repo), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"])
    if not res.ok:
        raise UsageError(f"tree '{tree.name}': no ref '{ref}' (try `git --git-dir {tree.repo} tag -l`)")
    return res.stdout.strip()


def checkout(ws: Workspace, name: str, ref: str | None = None, *, progress=None) -> Path:
    """A read-only worktree of ref (detached), made once per commit and reused."""
    tree = get(ws, name)
    if tree.state in ("missing", "incomplete", "not-a-repo"):
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
    proc.run(["git", "--git-dir", str(tree.repo), "worktree", "prune"])
    if progress:
        progress(f"checking out {name} {sha[:12]} into {path}")
    proc.run(["git", "--git-dir", str(tree.repo), "-c", "checkout.workers=0",
              "worktree", "add", "-q", "--detach", str(path), sha],
             timeout=1800, check=True)
    ok.write_text(sha + "\n")
    return path


def list_trees(ws: Workspace) -> list[Tree]:
    return [get(ws, n) for n in ws.trees]
