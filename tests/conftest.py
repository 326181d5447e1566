"""Shared fixtures: small real git repositories, throw-away workspaces, and the
real Linux tree and guest kernel (session-scoped: imported and built once)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kpatch_tool import workspace as wsmod

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    """Commits in fixtures need an identity; the user's git config is not read."""
    for k, v in {"GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@kpt-tests.org",
                 "GIT_COMMITTER_NAME": "Test Committer", "GIT_COMMITTER_EMAIL": "committer@kpt-tests.org",
                 "GIT_CONFIG_NOSYSTEM": "1"}.items():
        monkeypatch.setenv(k, v)


def git(repo: Path, *args: str, **kw) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, **kw).stdout


@pytest.fixture
def make_repo(tmp_path):
    """make_repo(name, {path: text}) -> a git repo with one commit of those files."""

    def make(name: str = "repo", files: dict[str, str] | None = None) -> Path:
        repo = tmp_path / name
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        for rel, text in (files or {"README": "hello\n"}).items():
            p = repo / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        return repo

    return make


@pytest.fixture
def tmp_ws(tmp_path, monkeypatch):
    """tmp_ws(trees_toml) -> a Workspace in tmp_path with its own cache."""

    def make(trees_toml: str = "") -> wsmod.Workspace:
        root = tmp_path / "ws"
        root.mkdir(exist_ok=True)
        (root / "kpt.toml").write_text(f'cache_dir = "{tmp_path / "cache"}"\n{trees_toml}')
        (root / "patches").mkdir(exist_ok=True)
        monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
        return wsmod.load(root)

    return make


@pytest.fixture(scope="session")
def project_ws(tmp_path_factory) -> wsmod.Workspace:
    """The project's own workspace (kpt.toml at the repository root, default cache).

    Runs go to a folder of the session's own: a developer's `kpt ci` in out/
    (and its workspace lock) is neither disturbed nor littered by the tests.
    """
    os.environ["KPT_OUT"] = str(tmp_path_factory.mktemp("out"))
    return wsmod.load(PROJECT)


@pytest.fixture(scope="session")
def linux_tree(project_ws):
    """The real Debian linux-source-6.1 tree, imported once (about 40 s cold)."""
    from kpatch_tool import trees

    return trees.import_tree(project_ws, "linux")


@pytest.fixture(scope="session")
def linux_src(request) -> Path:
    """A read-only checkout of the real Linux 6.1 base.

    KPT_TEST_LINUX_SRC names one made elsewhere: a run with a private, empty
    KPT_CACHE (several checkouts testing side by side) then skips the tree
    import. The mail tests only read scripts/ from it.
    """
    if os.environ.get("KPT_TEST_LINUX_SRC"):
        return Path(os.environ["KPT_TEST_LINUX_SRC"])
    from kpatch_tool import trees

    project_ws = request.getfixturevalue("project_ws")
    request.getfixturevalue("linux_tree")
    return trees.checkout(project_ws, "linux")


@pytest.fixture(scope="session")
def guest_build(project_ws, linux_src):
    """The `guest` profile built by kpt's build stage (about 7-10 min cold, seconds warm)."""
    from kpatch_tool import pipeline

    return pipeline.build_profile(project_ws, "linux", "guest", srctree=linux_src)


@pytest.fixture(scope="session")
def guest_kernel(guest_build) -> Path:
    if os.environ.get("KPT_TEST_BZIMAGE"):
        return Path(os.environ["KPT_TEST_BZIMAGE"])
    return guest_build.bzimage


# ---------------------------------------------------------------- series (issue 3)

SERIES_DATE = "2024-01-02T03:04:05+0000"


def _numbered(prefix: str, n: int = 30) -> str:
    return "".join(f"{prefix} line {i}\n" for i in range(1, n + 1))


def _commit(repo: Path, msg: str, files: dict[str, str | None], author: str | None = None) -> str:
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            git(repo, "rm", "-q", rel)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        git(repo, "add", rel)
    env = {**os.environ, "GIT_AUTHOR_DATE": SERIES_DATE, "GIT_COMMITTER_DATE": SERIES_DATE}
    args = ["commit", "-q", "-m", msg]
    if author:
        args += ["--author", author]
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def series_repo(make_repo):
    """A small kernel-like repo with a 3-patch stack (branch `work`) and bases:

    v1        the base the stack was written on
    v2        unrelated change + 3 lines inserted above patch 1's hunk (offset)
    merged    upstream took patch 2 ("blkfront: fix line 10") verbatim
    merged-later  upstream took patch 2, then changed the same lines again
    conflict  upstream changed the line patch 1 changes, differently
    The user's checkout stays on `main` (= v1) with a clean tree.
    """
    net = _numbered("net")
    blk = _numbered("blk")
    repo = make_repo("linux-src", {"Makefile": "all:\n", "README": "readme\n",
                                   "drivers/net/netfront.c": net, "drivers/block/blkfront.c": blk})
    git(repo, "tag", "v1")
    git(repo, "checkout", "-q", "-b", "work")
    _commit(repo, "netfront: fix line 5\n\nThe fifth line was wrong.\n",
            {"drivers/net/netfront.c": net.replace("net line 5\n", "net line 5 fixed\n")},
            author="Ada Lovelace <ada@example.org>")
    _commit(repo, "blkfront: fix line 10\n\nBody of the second patch.\n\nSigned-off-by: Ada Lovelace <ada@example.org>\n",
            {"drivers/block/blkfront.c": blk.replace("blk line 10\n", "blk line 10 fixed\n")},
            author="Ada Lovelace <ada@example.org>")
    _commit(repo, "net: add new.c\n",
            {"drivers/net/new.c": "int new_driver;\n"}, author="Bob Example <bob@example.org>")
    patch2 = git(repo, "rev-parse", "work~1").strip()
    git(repo, "checkout", "-q", "-b", "b-v2", "v1")
    _commit(repo, "readme: update", {"README": "readme v2\n",
                                     "drivers/net/netfront.c": "/* a */\n/* b */\n/* c */\n" + net})
    git(repo, "tag", "v2")
    git(repo, "checkout", "-q", "-b", "b-merged", "v1")
    _commit(repo, "unrelated", {"Makefile": "all:\n\t@true\n"})
    subprocess.run(["git", "-C", str(repo), "cherry-pick", patch2], check=True, capture_output=True,
                   env={**os.environ, "GIT_COMMITTER_DATE": SERIES_DATE})
    git(repo, "tag", "merged")
    blk_fixed = blk.replace("blk line 10\n", "blk line 10 fixed\n")
    _commit(repo, "blkfront: rework lines 9-11",
            {"drivers/block/blkfront.c": blk_fixed.replace("blk line 9\n", "blk line 9 v2\n")
             .replace("blk line 11\n", "blk line 11 v2\n")})
    git(repo, "tag", "merged-later")
    git(repo, "checkout", "-q", "-b", "b-conflict", "v1")
    _commit(repo, "netfront: upstream fix", {"drivers/net/netfront.c": net.replace("net line 5\n", "net line 5 upstream\n")})
    git(repo, "tag", "conflict")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.fixture
def series_ws(tmp_ws, series_repo):
    """A workspace whose tree `linux` is the series_repo fixture (used in place)."""
    return tmp_ws(f'[trees.linux]\nsource = "{series_repo}"\n')


@pytest.fixture
def demo_series(series_ws, series_repo):
    """Series `demo` (3 patches for linux, base v1) imported from v1..work."""
    from kpatch_tool import export

    series, _ = export.import_stack(series_ws, "v1..work", "linux", name="demo")
    return series


@pytest.fixture(scope="session")
def dom0_build(project_ws, linux_src):
    """The `xen-dom0` profile built by kpt's build stage (about 10-12 min cold)."""
    from kpatch_tool import pipeline

    return pipeline.build_profile(project_ws, "linux", "xen-dom0", srctree=linux_src)


@pytest.fixture(scope="session")
def dom0_kernel(dom0_build) -> Path:
    return dom0_build.bzimage


def _make_deb(out: Path, package: str, version: str, files: dict[str, str]) -> Path:
    """A linux-source-style .deb: /usr/src/<package>.tar.xz holding top/<files>."""
    import io
    import tarfile

    root = out / f"build-{package}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: Test Author <author@example.org>\n"
        f"Description: test source tarball\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, text in files.items():
            data = text.encode()
            ti = tarfile.TarInfo(f"{package}/{name}")
            ti.size, ti.mtime = len(data), 1700000000
            tf.addfile(ti, io.BytesIO(data))
    (root / "usr/src").mkdir(parents=True)
    xz = subprocess.run(["xz", "-c"], input=raw.getvalue(), capture_output=True, check=True).stdout
    (root / f"usr/src/{package}.tar.xz").write_bytes(xz)
    deb = out / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def local_archive(tmp_path):
    """local_archive({(package, version): {file: text}}) -> an apt source line for a flat,
    trusted file: repository holding those packages (kpt's apt reads it like Debian's)."""
    import hashlib

    def make(packages: dict[tuple[str, str], dict[str, str]]) -> str:
        repo = tmp_path / "archive"
        repo.mkdir(exist_ok=True)
        stanzas = []
        for (pkg, ver), files in packages.items():
            deb = _make_deb(repo, pkg, ver, files)
            data = deb.read_bytes()
            stanzas.append(f"Package: {pkg}\nVersion: {ver}\nArchitecture: all\n"
                           f"Maintainer: Test Author <author@example.org>\nDescription: test source tarball\n"
                           f"Filename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
        (repo / "Packages").write_text("\n".join(stanzas))
        p = (repo / "Packages").read_bytes()
        (repo / "Release").write_text(
            "Origin: kpt-test\nLabel: kpt-test\nSuite: test\nCodename: test\nArchitectures: amd64 all\n"
            f"SHA256:\n {hashlib.sha256(p).hexdigest()} {len(p)} Packages\n")
        return f"deb [trusted=yes] file:{repo} ./"

    return make
