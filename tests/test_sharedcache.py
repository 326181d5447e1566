"""Caches shared by CI runners: builds fetched by identity instead of rebuilt, ccache's remote storage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpatch_tool import build as buildmod
from kpatch_tool import sharedcache
from kpatch_tool.errors import UsageError
from kpatch_tool.sharedcache import FleetSettings

from conftest import git


def _backend(srctree: Path, build_dir: Path, shared: Path | None, calls: list, config: str = "c1"):
    """A build whose make is a small Python step (a real kernel build is tested by the slow tests)."""

    def run(stamp, log):
        calls.append(build_dir)
        (build_dir / "arch/x86/boot").mkdir(parents=True, exist_ok=True)
        (build_dir / "arch/x86/boot/bzImage").write_bytes(b"kernel " + config.encode())
        (build_dir / "staging/lib/modules/6.1").mkdir(parents=True, exist_ok=True)
        (build_dir / "staging/lib/modules/6.1/modules.dep").write_text("")
        (build_dir / "scratch.o").write_text("not shared")
        return buildmod.Ran([])

    return buildmod.Backend("linux", srctree, build_dir, {"config_hash": config}, [build_dir / "arch/x86/boot/bzImage"],
                            run, lambda: buildmod._collect(build_dir), None, stages=(),
                            shared_files=buildmod.LINUX_SHARED_FILES, fleet=FleetSettings(shared, None))


@pytest.fixture
def two_checkouts(make_repo, tmp_path, monkeypatch):
    """The same commit checked out in two folders: two runners' worktrees (a build lock of their own:
    these tiny builds must not wait for a kernel build elsewhere on the machine)."""
    monkeypatch.setenv("KPT_BUILD_LOCK", str(tmp_path / "build.lock"))
    a = make_repo("a", {"Makefile": "all:\n"})
    b = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    assert git(a, "rev-parse", "HEAD") == git(b, "rev-parse", "HEAD")
    return a, b


def test_a_second_runner_fetches_the_build_instead_of_running_make(two_checkouts, tmp_path):
    a, b = two_checkouts
    shared, calls = tmp_path / "shared", []
    first, _ = buildmod.cached_build(_backend(a, tmp_path / "runner1" / "build", shared, calls))
    assert not first.cached and len(calls) == 1
    assert len(list((shared / "builds").glob("*.tar"))) == 1

    second, stamp = buildmod.cached_build(_backend(b, tmp_path / "runner2" / "build", shared, calls))
    assert len(calls) == 1, "make ran on the second runner"
    assert second.cached and second.fetched_from and second.fetched_from.startswith(str(shared))
    assert (tmp_path / "runner2/build/arch/x86/boot/bzImage").read_bytes() == b"kernel c1"
    assert (tmp_path / "runner2/build/staging/lib/modules/6.1/modules.dep").exists()
    assert not (tmp_path / "runner2/build/scratch.o").exists()  # only what a boot needs travels
    assert second.artifacts["bzImage"].sha256 == first.artifacts["bzImage"].sha256
    assert stamp["identity"]["srctree"] == str(b.resolve())  # stamped as the second runner's own build
    # ... so a rerun there is an ordinary local hit.
    again, _ = buildmod.cached_build(_backend(b, tmp_path / "runner2" / "build", shared, calls))
    assert again.cached and len(calls) == 1


def test_a_different_identity_is_not_fetched(two_checkouts, tmp_path):
    a, b = two_checkouts
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls, config="c1"))
    other, _ = buildmod.cached_build(_backend(b, tmp_path / "r2", shared, calls, config="c2"))
    assert len(calls) == 2 and not other.cached and other.fetched_from is None


def test_a_changed_source_is_not_fetched(two_checkouts, tmp_path):
    a, b = two_checkouts
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls))
    (b / "Makefile").write_text("all:\n\ttrue\n")  # an uncommitted edit: another source state
    buildmod.cached_build(_backend(b, tmp_path / "r2", shared, calls))
    assert len(calls) == 2


def test_a_torn_shared_file_means_a_local_build(two_checkouts, tmp_path):
    a, b = two_checkouts
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls))
    (tar,) = (shared / "builds").glob("*.tar")
    tar.write_bytes(tar.read_bytes()[:100])
    built, _ = buildmod.cached_build(_backend(b, tmp_path / "r2", shared, calls))
    assert len(calls) == 2 and not built.cached


def test_settings_come_from_kpt_toml_and_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.delenv(sharedcache.ENV_SHARED, raising=False)
    monkeypatch.delenv(sharedcache.ENV_CCACHE, raising=False)
    data = {"fleet": {"shared_cache": "/srv/a", "ccache_remote": "file:/srv/c"}}
    assert sharedcache.settings(data) == FleetSettings(Path("/srv/a"), "file:/srv/c")
    monkeypatch.setenv(sharedcache.ENV_SHARED, str(tmp_path))
    assert sharedcache.settings(data).shared_cache == tmp_path
    assert sharedcache.settings({}) == FleetSettings(tmp_path, None)


@pytest.mark.parametrize("fleet, message", [
    ({"shared": "/x"}, "unknown key"),
    ({"shared_cache": 5}, "'shared_cache' must be a non-empty string"),
    ("x", "must be a \\[fleet\\] table"),
])
def test_a_bad_fleet_table_is_named(tmp_ws, fleet, message):
    import tomlkit

    text = tomlkit.dumps({"fleet": fleet}) if isinstance(fleet, dict) else f'fleet = "{fleet}"\n'
    with pytest.raises(UsageError, match=message):
        tmp_ws(text)


def test_ccache_remote_storage_feeds_a_runner_with_an_empty_local_cache(tmp_path, monkeypatch):
    """Real ccache and gcc: the second compile, with a new local cache, hits in the remote storage."""
    src = tmp_path / "a.c"
    src.write_text("int f(void) { return 42; }\n")
    remote = f"file:{tmp_path / 'remote'}"
    stats = []
    for runner in ("r1", "r2"):
        monkeypatch.setenv("CCACHE_DIR", str(tmp_path / runner))
        log = tmp_path / f"{runner}.stats"
        with sharedcache.ccache_configured(remote, log):
            subprocess.run(["ccache", "gcc", "-c", str(src), "-o", str(tmp_path / f"{runner}.o")], check=True)
        stats.append(sharedcache.ccache_stats(log))
    assert stats[0] == {"compilations": 1, "hits": 0, "remote_hits": 0, "misses": 1, "hit_rate": 0.0}
    assert stats[1] == {"compilations": 1, "hits": 1, "remote_hits": 1, "misses": 0, "hit_rate": 1.0}
    assert "CCACHE_REMOTE_STORAGE" not in __import__("os").environ  # restored after the build


def test_no_stats_log_is_no_stats(tmp_path):
    assert sharedcache.ccache_stats(tmp_path / "none") is None


def test_a_shared_tar_reaching_outside_the_build_folder_is_not_unpacked(two_checkouts, tmp_path):
    import io
    import tarfile

    a, b = two_checkouts
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls))
    (tar_path,) = (shared / "builds").glob("*.tar")
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    buildmod.cached_build(_backend(b, tmp_path / "r2" / "build", shared, calls))
    assert len(calls) == 2 and not (tmp_path / "r2" / "evil").exists()


def test_the_same_content_under_another_commit_is_fetched(make_repo, tmp_path, monkeypatch):
    """Two runners' imports of one Debian version: same files, commits that differ (message, date)."""
    monkeypatch.setenv("KPT_BUILD_LOCK", str(tmp_path / "build.lock"))
    a = make_repo("a", {"Makefile": "all:\n"})
    b = make_repo("b", {"Makefile": "all:\n"})
    git(b, "commit", "-q", "--amend", "-m", "imported by another kpt")
    assert git(a, "rev-parse", "HEAD") != git(b, "rev-parse", "HEAD")
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls))
    built, _ = buildmod.cached_build(_backend(b, tmp_path / "r2", shared, calls))
    assert len(calls) == 1 and built.fetched_from


def test_an_annotated_tag_at_head_is_part_of_the_shared_name(two_checkouts, tmp_path):
    """kbuild's release string has a '+' unless HEAD has an annotated tag: not the same output."""
    a, b = two_checkouts
    git(a, "tag", "-a", "-m", "import", "debian/1")
    git(b, "tag", "debian/1")  # lightweight: `git describe --exact-match` does not see it
    shared, calls = tmp_path / "shared", []
    buildmod.cached_build(_backend(a, tmp_path / "r1", shared, calls))
    buildmod.cached_build(_backend(b, tmp_path / "r2", shared, calls))
    assert len(calls) == 2
