"""kpt's private apt state, against a local file: archive (real apt-get, real dpkg-deb)."""

from __future__ import annotations

import subprocess

import pytest

from kpatch_tool import apt
from kpatch_tool.errors import EXIT_PREREQ


def test_offers_lists_every_version_and_fetches_exactly_the_one_asked(tmp_path, local_archive):
    line = local_archive({("linux-source-0.1", "0.1-1"): {"a": "1\n"}, ("linux-source-0.1", "0.1-2"): {"a": "2\n"}})
    arch = apt.Archive(tmp_path / "cache", {"sources": [line]})
    assert [o.version for o in arch.offers("linux-source-0.1")] == ["0.1-2", "0.1-1"]
    got = arch.fetch_deb("linux-source-0.1", "0.1-1", tmp_path / "pool")
    assert got.path.name == "linux-source-0.1_0.1-1_all.deb" and got.version == "0.1-1"
    assert got.sha256 == apt.sha256_file(got.path)


def test_the_hosts_apt_state_is_not_touched(tmp_path, local_archive):
    """Everything apt writes for kpt lands under kpt's cache, never in /var/lib/apt."""
    line = local_archive({("linux-source-0.1", "0.1-1"): {"a": "1\n"}})
    arch = apt.Archive(tmp_path / "cache", {"sources": [line]})
    arch.update()
    lists = list((tmp_path / "cache/apt/default/state/lists").iterdir())
    assert any("Packages" in p.name for p in lists)
    host = subprocess.run(["grep", "-rl", str(tmp_path), "/var/lib/apt/lists", "/etc/apt"], capture_output=True)
    assert host.stdout == b""


def test_a_version_the_archive_does_not_offer_is_exit_7_with_the_offers(tmp_path, local_archive):
    line = local_archive({("linux-source-0.1", "0.1-2"): {"a": "2\n"}})
    arch = apt.Archive(tmp_path / "cache", {"sources": [line]})
    with pytest.raises(apt.VersionGone, match=r"0\.1-1 is not in the archive.*offers: 0\.1-2") as exc:
        arch.fetch_deb("linux-source-0.1", "0.1-1", tmp_path / "pool")
    assert exc.value.exit_code == EXIT_PREREQ


def test_debian_version_order_is_dpkgs():
    assert apt.compare_versions("6.1.192-2", "6.1.192-10") < 0
    assert apt.compare_versions("6.12.117-1~deb12u1", "6.12.117-1") < 0
    assert apt.compare_versions("1:7.2", "8.0") > 0


def test_derived_sources_use_the_configured_suites(tmp_path):
    arch = apt.Archive(tmp_path, {"suites": ["bookworm", "bookworm-security"], "mirror": "http://m/debian",
                                  "security_mirror": "http://m/debian-security"}, ("sid",))
    text = arch.sources_text()
    assert "http://m/debian bookworm main" in text
    assert "http://m/debian-security bookworm-security main" in text
    assert "http://m/debian sid main" in text and "deb-src" in text


def test_each_set_of_suites_has_an_apt_state_of_its_own(tmp_ws):
    """A tree on sid must not take the Debian 12 trees down when sid cannot be read."""
    from kpatch_tool import trees

    ws = tmp_ws('[trees.linux]\nsource = "debian:linux-source-6.1"\nversion = "1"\n'
                '[trees.new]\nsource = "debian:linux-source-7.2"\nversion = "1"\nsuites = ["sid"]\n')
    a, b = trees.archive(ws, "linux"), trees.archive(ws, "new")
    assert a.root.name == "default" and b.root.name == "+sid" and a.root.parent == b.root.parent
    assert "sid" not in a.sources_text() and " sid main" in b.sources_text()
    assert apt.Archive(ws.cache_dir, {"allow_expired": True})._options().count("Acquire::Check-Valid-Until=false") == 1
