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
    for k, v in {"GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.org",
                 "GIT_COMMITTER_NAME": "Test Committer", "GIT_COMMITTER_EMAIL": "committer@example.org",
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
def project_ws() -> wsmod.Workspace:
    """The project's own workspace (kpt.toml at the repository root, default cache)."""
    return wsmod.load(PROJECT)


@pytest.fixture(scope="session")
def linux_tree(project_ws):
    """The real Debian linux-source-6.1 tree, imported once (about 40 s cold)."""
    from kpatch_tool import trees

    return trees.import_tree(project_ws, "linux")


@pytest.fixture(scope="session")
def linux_src(project_ws, linux_tree) -> Path:
    """A read-only checkout of the real Linux 6.1 base."""
    from kpatch_tool import trees

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
