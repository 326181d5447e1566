"""Recipients from the tree's own get_maintainer.pl (the kernel's real script
on a small MAINTAINERS), .b4-config, project lists and series.toml overrides."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import mailfixtures as mf
from kpatch_tool import maintainers
from kpatch_tool.errors import UsageError


@pytest.fixture
def patches(tmp_path, linux_src):
    repo = mf.kernel_like_repo(tmp_path / "linux", linux_src)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.commit(repo, "drivers/foo/foo.c", mf.FOO_C.replace("return 0", "return 1"), "foo: one")
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: two")
    files = subprocess.run(["git", "-C", str(repo), "format-patch", "-o", str(tmp_path / "p"), f"{base}..HEAD"],
                           check=True, capture_output=True, text=True).stdout.split()
    return repo, [Path(f) for f in files]


def test_maintainers_go_to_to_and_reviewers_and_lists_to_cc(patches):
    repo, files = patches
    rec = maintainers.for_patch(repo, files[0], "linux")
    assert rec.to == ["Foo Maintainer <foo@example.org>"]
    assert rec.cc == ["Foo Reviewer <foorev@example.org>", "foo-list@vger.kernel.org",
                      "linux-kernel@vger.kernel.org"]
    assert rec.lists == ["foo-list@vger.kernel.org", "linux-kernel@vger.kernel.org"]


def test_cover_letter_gets_the_union_of_every_patch(patches):
    repo, files = patches
    per, cover = maintainers.for_series(repo, files, "linux")
    assert per[files[1].name].to == ["Bar Maintainer <bar@example.org>"]
    assert "foo-list@vger.kernel.org" not in per[files[1].name].cc
    assert cover.to == ["Foo Maintainer <foo@example.org>", "Bar Maintainer <bar@example.org>"]
    assert set(cover.cc) == {"Foo Reviewer <foorev@example.org>", "foo-list@vger.kernel.org",
                             "linux-kernel@vger.kernel.org", "bar-list@vger.kernel.org"}


@pytest.mark.parametrize("kind,lst", [("qemu", "qemu-devel@nongnu.org"), ("xen", "xen-devel@lists.xenproject.org")])
def test_project_list_is_always_there(patches, kind, lst):
    repo, files = patches
    per, cover = maintainers.for_series(repo, files, kind)
    assert all(lst in r.to for r in per.values())
    assert lst in cover.to and lst in cover.lists


def test_series_toml_overrides_are_added(patches):
    repo, files = patches
    per, cover = maintainers.for_series(repo, files, "linux", to=["Boss <boss@example.org>"],
                                        cc=["watcher@example.org"], mlist="special@lists.example.org")
    for r in per.values():
        assert r.to[:2] == ["special@lists.example.org", "Boss <boss@example.org>"]
        assert "watcher@example.org" in r.cc
    assert "special@lists.example.org" in cover.lists


def test_b4_config_commands_and_series_lists_are_honoured(patches):
    repo, files = patches
    (repo / ".b4-config").write_text(
        "[b4]\n    send-series-to = series-list@example.org\n    send-auto-to-cmd = echo\n"
        "    send-auto-cc-cmd = echo from-b4@example.org\n")
    per, cover = maintainers.for_series(repo, files, "linux")
    for r in per.values():
        assert r.to == ["series-list@example.org"]  # get_maintainer.pl was not used
        assert r.cc == ["from-b4@example.org"]


def test_missing_get_maintainer_is_an_error_unless_series_toml_names_recipients(tmp_path):
    repo = mf.kernel_like_repo(tmp_path / "xen", None, scripts=False)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.commit(repo, "lib/bar.c", mf.BAR_C.replace("return 1", "return 2"), "bar: two")
    files = [Path(f) for f in subprocess.run(["git", "-C", str(repo), "format-patch", "-o", str(tmp_path / "p"),
                                              f"{base}..HEAD"], check=True, capture_output=True,
                                             text=True).stdout.split()]
    with pytest.raises(UsageError, match=r"no scripts/get_maintainer.pl in .* series.toml"):
        maintainers.for_series(repo, files, "linux")
    per, cover = maintainers.for_series(repo, files, "xen", to=["x@example.org"])
    assert cover.to == ["xen-devel@lists.xenproject.org", "x@example.org"]


def test_failing_get_maintainer_names_the_script_and_patch(patches):
    repo, files = patches
    (repo / "scripts/get_maintainer.pl").write_text('print STDERR "MAINTAINERS: parse error\\n"; exit 3;\n')
    with pytest.raises(UsageError, match=r"get_maintainer.pl failed on 0001-foo-one.patch .*exit 3") as ei:
        maintainers.for_series(repo, files, "linux")
    assert "parse error" in ei.value.detail
