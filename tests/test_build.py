"""Builds: no-op detection before make, untrusted interrupted builds, warning deltas.

The fast tests drive build.py with a small real C project whose Makefile takes
O= and prints kbuild-style step lines; the slow ones build the real kernel.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import git
from kpatch_tool import build
from kpatch_tool.errors import BuildError, UsageError

# A miniature kbuild: out-of-tree objects in $(O), kbuild-like step lines, a
# counter of make runs, and an "arch/x86/boot/bzImage" made by linking.
MAKEFILE = r"""
O ?= .
CC ?= gcc
SRCS := $(sort $(wildcard $(CURDIR)/src/*.c))
OBJS := $(patsubst $(CURDIR)/src/%.c,$(O)/%.o,$(SRCS))
bzImage: $(O)/arch/x86/boot/bzImage
all: bzImage
$(O)/%.o: $(CURDIR)/src/%.c
	@echo "  CC      $*.o"
	@$(CC) -Wall -c $< -o $@
$(O)/arch/x86/boot/bzImage: $(OBJS)
	@echo run >> $(O)/make-runs
	@mkdir -p $(dir $@)
	@echo "  LD      bzImage"
	@$(CC) $(OBJS) -o $@
.PHONY: bzImage all
"""


@pytest.fixture
def mini_tree(make_repo, tmp_path, monkeypatch):
    # The real kernel builds hold the machine-wide lock; the miniature needs none of it.
    monkeypatch.setenv("KPT_BUILD_LOCK", str(tmp_path / "build.lock"))
    return make_repo("mini", {
        "Makefile": MAKEFILE,
        "src/main.c": "int helper(void);\nint main(void) { return helper(); }\n",
        "src/helper.c": "int helper(void) { return 0; }\n",
    })


def _build(ws, tree, cfg="CONFIG_X=y\n", **kw):
    return build.build_linux(ws, srctree=tree, tree="mini", profile="p", config_text=cfg,
                             config_hash=str(abs(hash(cfg))), wrapper="none", jobs=1, **kw)


def test_rerun_with_nothing_changed_does_not_start_make(tmp_ws, mini_tree):
    ws = tmp_ws()
    first = _build(ws, mini_tree)
    assert not first.cached and first.bzimage.exists()
    runs = (first.build_dir / "make-runs").read_text()
    start = time.monotonic()
    again = _build(ws, mini_tree)
    assert again.cached
    assert time.monotonic() - start < 2.0
    assert (first.build_dir / "make-runs").read_text() == runs
    assert again.artifacts["bzImage"].sha256 == first.artifacts["bzImage"].sha256


def test_a_changed_file_rebuilds_only_that_file(tmp_ws, mini_tree):
    ws = tmp_ws()
    _build(ws, mini_tree)
    (mini_tree / "src/helper.c").write_text("int helper(void) { return 1; }\n")
    steps = []
    res = _build(ws, mini_tree, progress=steps.append)
    assert not res.cached
    log = res.log.read_text()
    assert "CC      helper.o" in log and "CC      main.o" not in log


def test_a_changed_config_gets_its_own_build_folder(tmp_ws, mini_tree):
    ws = tmp_ws()
    a = _build(ws, mini_tree, cfg="CONFIG_A=y\n")
    b = _build(ws, mini_tree, cfg="CONFIG_B=y\n")
    assert a.build_dir != b.build_dir
    assert (b.build_dir / ".config").read_text() == "CONFIG_B=y\n"


def test_an_interrupted_build_is_never_trusted(tmp_ws, mini_tree):
    ws = tmp_ws()
    res = _build(ws, mini_tree)
    # A killed build: the stamp is gone (it is removed before make starts).
    (res.build_dir / build.STAMP).unlink()
    again = _build(ws, mini_tree)
    assert not again.cached


def test_compile_error_names_file_line_and_log(tmp_ws, mini_tree):
    ws = tmp_ws()
    (mini_tree / "src/helper.c").write_text("int helper(void) { return nope; }\n")
    with pytest.raises(BuildError) as exc:
        _build(ws, mini_tree)
    assert exc.value.exit_code == 5
    assert "helper.c:1" in exc.value.message and "nope" in exc.value.message
    assert "build.log" in exc.value.message
    assert not (Path(exc.value.message.split("(log ")[1].rstrip(")")).parent / build.STAMP).exists()


def test_vanished_worktree_is_a_usage_error(tmp_ws, tmp_path):
    with pytest.raises(UsageError, match="did the worktree vanish"):
        _build(tmp_ws(), tmp_path / "gone")


def test_each_reports_new_warnings_per_patch_and_the_patch_that_breaks(tmp_ws, mini_tree):
    ws = tmp_ws()
    base = git(mini_tree, "rev-parse", "HEAD").strip()
    steps = [
        ("helper: add an unused variable", "src/helper.c", "int helper(void) { int unused; return 0; }\n"),
        ("main: harmless change", "src/main.c", "int helper(void);\nint main(void) { return helper() + 0; }\n"),
        ("helper: fix the unused variable", "src/helper.c", "int helper(void) { return 0; }\n"),
        ("helper: break the build", "src/helper.c", "int helper(void) { return missing; }\n"),
        ("main: never built", "src/main.c", "int main(void) { return 0; }\n"),
    ]
    for subject, path, text in steps:
        (mini_tree / path).write_text(text)
        git(mini_tree, "commit", "-q", "-am", subject)
    result = build.build_each(ws, worktree=mini_tree, base=base, tree="mini", profile="p",
                              config_text="CONFIG_X=y\n", config_hash="h", wrapper="none", jobs=1)
    assert [s.status for s in result] == ["builds", "builds", "builds", "fails"]
    assert len(result[0].new_warnings) == 1 and "unused" in result[0].new_warnings[0]
    # main.c recompiled: the helper.c warning must still count as present, not fixed.
    assert result[1].new_warnings == [] and result[1].fixed_warnings == []
    assert result[2].fixed_warnings and not result[2].new_warnings
    assert "helper: break the build" in result[3].error
    # Our bisect worktree is separate: the user's tree is still at its tip.
    assert git(mini_tree, "log", "-1", "--format=%s").strip() == "main: never built"


@pytest.mark.slow
def test_real_guest_kernel_builds_and_a_rerun_is_a_no_op(project_ws, linux_src, guest_build):
    from kpatch_tool import pipeline

    assert guest_build.bzimage.exists() and guest_build.kernel_release.startswith("6.1.")
    assert (guest_build.build_dir / "staging").exists() or "CONFIG_MODULES=y" not in guest_build.config.read_text()
    start = time.monotonic()
    again = pipeline.build_profile(project_ws, "linux", "guest", srctree=linux_src)
    assert again.cached and time.monotonic() - start < 10


@pytest.mark.slow
def test_real_one_file_change_rebuilds_little(project_ws, linux_src, guest_build):
    """Edits the shared base checkout for the duration of the test, then restores it."""
    from kpatch_tool import pipeline

    victim = linux_src / "drivers/tty/serial/8250/8250_core.c"
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\n/* kpt test: one-file change */\n")
        res = pipeline.build_profile(project_ws, "linux", "guest", srctree=linux_src)
        assert not res.cached
        compiled = [l for l in res.log.read_text().splitlines() if l.startswith("  CC ")]
        assert any("8250_core.o" in l for l in compiled)
        assert len(compiled) < 20
    finally:
        victim.write_bytes(original)
        pipeline.build_profile(project_ws, "linux", "guest", srctree=linux_src)


def test_a_changed_prerequisite_version_invalidates_the_cached_build(tmp_ws, mini_tree, monkeypatch):
    """kmod (or gcc, ...) upgraded since the build: its stamp no longer matches, make runs."""
    from kpatch_tool import prereqs

    ws = tmp_ws()
    real = prereqs.installed
    first = _build(ws, mini_tree)
    assert _build(ws, mini_tree).cached
    monkeypatch.setattr(prereqs, "installed",
                        lambda names: {**real(names), **({"kmod": "99-upgraded"} if "kmod" in names else {})})
    again = _build(ws, mini_tree)
    assert not again.cached
    assert again.identity["host"]["packages"]["kmod"] == "99-upgraded"
    assert first.identity != again.identity


def test_a_build_without_depmod_is_refused_before_make(tmp_ws, mini_tree, tmp_path, monkeypatch):
    from test_prereqs import _path_without

    from kpatch_tool.errors import EXIT_PREREQ, PrereqError

    monkeypatch.setenv("PATH", _path_without(tmp_path, "depmod"))
    with pytest.raises(PrereqError, match="kmod") as exc:
        _build(tmp_ws(), mini_tree)
    assert exc.value.exit_code == EXIT_PREREQ
    assert not list((tmp_path / "cache").rglob("make-runs"))


def test_a_run_walks_the_source_once_and_the_next_run_sees_edits(mini_tree):
    """source_state (a git status of the whole tree) is asked by the config and the build
    stages; inside one run (remembered_source_states) the first answer stands."""
    before = build.source_state(mini_tree)
    with build.remembered_source_states():
        assert build.source_state(mini_tree) == before
        (mini_tree / "src/helper.c").write_text("int helper(void) { return 1; }\n")
        assert build.source_state(mini_tree) == before  # the run's walk, not a second one
        assert build.source_state(mini_tree, portable=True) != before  # a key of its own
    edited = build.source_state(mini_tree)
    assert edited != before  # outside a run, every call walks
    with build.remembered_source_states():
        assert build.source_state(mini_tree) == edited
