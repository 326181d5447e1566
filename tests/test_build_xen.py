"""Xen hypervisor builds: config through kpt's kconfig, no-op reruns, failures.

The fast tests drive build_xen.py with a miniature Xen tree: a real Kconfig
(read by kconfiglib), an x86_64_defconfig, and an xen/Makefile that takes O=,
answers `xenversion` and `olddefconfig` like Xen's, prints kbuild step lines
and links src/*.c into $(O)/xen with real gcc. The heavy test builds the real
Debian Xen 4.17 hypervisor (`pytest -m heavy tests/test_build_xen.py`).
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from conftest import git
from kpatch_tool import build_xen
from kpatch_tool.errors import BuildError, ConfigError

KCONFIG = """\
mainmenu "Xen/$(SRCARCH) $(XEN_FULLVERSION) Configuration"

config X86_64
	def_bool y

config EXPERT
	bool "Configure standard Xen features (expert users)"

config PV
	bool "PV support"
	default y

config PV_SHIM
	bool "PV shim"
	depends on PV

config TRACEBUFFER
	bool "Trace buffer" if EXPERT
	default y
"""

# olddefconfig keeps .config as it is (our output is its fixed point), unless
# FAKE_XEN_DRIFT asks it to behave like a kconfig that evaluates differently.
MAKEFILE = r"""
O ?= .
CC ?= gcc
SRC := $(CURDIR)
xenversion:
	@echo 4.17.0-fake
olddefconfig:
	@if [ -n "$(FAKE_XEN_DRIFT)" ]; then echo "CONFIG_DRIFT=y" >> $(O)/.config; fi
xen.gz: $(O)/xen
	@gzip -n -f -9 < $< > $@.new && mv $@.new $(O)/xen.gz
$(O)/%.o: $(SRC)/src/%.c $(O)/.config
	@echo "  CC      $*.o"
	@$(CC) -Wall -c $< -o $@
$(O)/xen: $(patsubst $(SRC)/src/%.c,$(O)/%.o,$(sort $(wildcard $(SRC)/src/*.c)))
	@echo run >> $(O)/make-runs
	@echo "  LD      xen"
	@$(CC) $^ -o $@
	@test "$(XEN_WHOAMI)" = kpt
.PHONY: xenversion olddefconfig xen.gz
"""


@pytest.fixture
def xen_tree(make_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("KPT_BUILD_LOCK", str(tmp_path / "build.lock"))
    # kconfig's cross-check keeps a folder per tree in the cache: not the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KPT_CACHE", raising=False)
    monkeypatch.delenv("FAKE_XEN_DRIFT", raising=False)

    def make(where: str = "xen"):
        return make_repo(where, {
            "xen/Kconfig": KCONFIG,
            "xen/Makefile": MAKEFILE,
            "xen/arch/x86/configs/x86_64_defconfig": "CONFIG_PV=y\n",
            "xen/src/setup.c": "int start_xen(void);\nint main(void) { return start_xen(); }\n",
            "xen/src/domain.c": "int start_xen(void) { return 0; }\n",
        })

    return make


@pytest.fixture
def fragment(tmp_path):
    def make(text: str, name: str = "frag.config") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return make


def _build(ws, src, fragments=(), **kw):
    return build_xen.build_xen(ws, srctree=src, fragments=fragments, wrapper="none", jobs=1, **kw)


def test_builds_xen_and_xen_gz_with_hashes(tmp_ws, xen_tree):
    ws = tmp_ws()
    res = _build(ws, xen_tree())
    assert not res.cached and res.version == "4.17.0-fake"
    assert res.xen.is_file() and gzip.decompress(res.xen_gz.read_bytes()) == res.xen.read_bytes()
    assert set(res.artifacts) >= {"xen", "xen.gz", ".config"}
    assert res.artifacts["xen"].size == res.xen.stat().st_size
    assert len(res.artifacts["xen.gz"].sha256) == 64
    assert res.to_json()["build_dir"] == str(res.build_dir)
    # What `xl info` reports as build_id, for the run's xen-from-tree check (gcc links with --build-id).
    assert len(build_xen.build_id(res.xen)) == 40


def test_rerun_with_nothing_changed_does_not_start_make(tmp_ws, xen_tree):
    ws = tmp_ws()
    src = xen_tree()
    first = _build(ws, src)
    runs = (first.build_dir / "make-runs").read_text()
    start = time.monotonic()
    again = _build(ws, src)
    assert again.cached and time.monotonic() - start < 3
    assert (first.build_dir / "make-runs").read_text() == runs
    assert again.artifacts["xen"].sha256 == first.artifacts["xen"].sha256


def test_a_changed_source_file_runs_make_again(tmp_ws, xen_tree):
    ws = tmp_ws()
    src = xen_tree()
    _build(ws, src)
    (src / "xen/src/domain.c").write_text("int start_xen(void) { return 1; }\n")
    res = _build(ws, src)
    assert not res.cached
    log = res.log.read_text()
    assert "CC      domain.o" in log and "CC      setup.o" not in log


def test_fragment_values_land_in_the_config_make_sees(tmp_ws, xen_tree, fragment):
    ws = tmp_ws()
    src = xen_tree()
    plain = _build(ws, src)
    frag = fragment("CONFIG_EXPERT=y\n# CONFIG_TRACEBUFFER is not set\nCONFIG_PV_SHIM=y\n")
    res = _build(ws, src, [frag])
    assert res.build_dir != plain.build_dir and res.config_hash != plain.config_hash
    text = res.config.read_text()
    assert "CONFIG_PV_SHIM=y" in text and "# CONFIG_TRACEBUFFER is not set" in text
    assert "Xen/x86 4.17.0-fake Configuration" in text  # Xen's own variables reached kconfiglib
    assert res.fragments == [str(frag)]


def test_a_value_that_cannot_take_is_a_config_error_before_make(tmp_ws, xen_tree, fragment):
    ws = tmp_ws()
    src = xen_tree()
    # TRACEBUFFER's prompt needs EXPERT: without it the default y wins.
    frag = fragment("# CONFIG_TRACEBUFFER is not set\n# CONFIG_PV is not set\nCONFIG_PV_SHIM=y\n")
    with pytest.raises(ConfigError) as exc:
        _build(ws, src, [frag])
    assert exc.value.exit_code == 4
    assert "CONFIG_TRACEBUFFER" in exc.value.detail and "CONFIG_PV_SHIM" in exc.value.detail
    assert not list(src.glob("xen/.kpt-build-*/make-runs")) and not list(ws.cache_dir.rglob("make-runs"))


def test_a_config_xens_olddefconfig_would_change_fails_before_make(tmp_ws, xen_tree, monkeypatch):
    ws = tmp_ws()
    src = xen_tree()
    monkeypatch.setenv("FAKE_XEN_DRIFT", "1")
    with pytest.raises(ConfigError) as exc:
        _build(ws, src)
    assert "fixed point" in exc.value.message and "+CONFIG_DRIFT=y" in exc.value.detail
    assert not list(ws.cache_dir.rglob("make-runs"))


def test_a_compile_error_is_a_build_error_naming_file_line_and_log(tmp_ws, xen_tree):
    ws = tmp_ws()
    src = xen_tree()
    (src / "xen/src/domain.c").write_text("int start_xen(void) { return nope; }\n")
    with pytest.raises(BuildError) as exc:
        _build(ws, src)
    assert exc.value.exit_code == 5
    assert "domain.c:1:" in exc.value.message and "nope" in exc.value.message
    assert "build.log" in exc.value.message
    # A failed build leaves no stamp: the next run must not trust it.
    (src / "xen/src/domain.c").write_text("int start_xen(void) { return 0; }\n")
    assert not _build(ws, src).cached


def test_our_worktree_gets_the_build_folder_inside_xen_and_git_ignores_it(tmp_ws, xen_tree):
    ws = tmp_ws()
    # A checkout of ours lives under the cache's worktrees/: built in place, beside the source.
    (ws.cache_dir / "worktrees" / "xen").mkdir(parents=True)
    src = xen_tree()
    ours = ws.cache_dir / "worktrees" / "xen" / "0123456789ab"
    src.rename(ours)
    res = _build(ws, ours)
    assert res.build_dir.parent == ours / "xen" and res.build_dir.name.startswith(".kpt-build-xen-")
    assert git(ours, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
@pytest.mark.heavy
def test_real_xen_hypervisor_builds_and_a_rerun_is_a_no_op(project_ws):
    """The Debian Xen 4.17 tree (`kpt tree import xen`), kernel-configs/xen/smoke.config."""
    from kpatch_tool import trees
    from conftest import PROJECT

    src = trees.checkout(project_ws, "xen")
    frag = PROJECT / "kernel-configs/xen/smoke.config"
    res = build_xen.build_xen(project_ws, srctree=src, fragments=[frag])
    assert res.version.startswith("4.17")
    head = res.xen.read_bytes()[:4]
    assert head == b"\x7fELF" and res.artifacts["xen.gz"].size > 500_000
    assert "# CONFIG_TRACEBUFFER is not set" in res.config.read_text()
    start = time.monotonic()
    again = build_xen.build_xen(project_ws, srctree=src, fragments=[frag])
    assert again.cached and time.monotonic() - start < 10
    assert git(src, "status", "--porcelain") == ""


@pytest.mark.slow
@pytest.mark.heavy
def test_real_xen_we_built_boots_under_qemu_until_it_asks_for_dom0(project_ws, tmp_path):
    """Without a dom0 kernel Xen panics by design: proof that our ELF is a bootable hypervisor."""
    from kpatch_tool import proc, trees
    from conftest import PROJECT

    src = trees.checkout(project_ws, "xen")
    res = build_xen.build_xen(project_ws, srctree=src, fragments=[PROJECT / "kernel-configs/xen/smoke.config"])
    seen = []
    out = proc.stream(["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
                       "-monitor", "none", "-kernel", str(res.xen), "-append", "console=com1 noreboot"],
                      on_line=lambda l: seen.append(l) or "dom0 kernel not specified" in l,
                      log=tmp_path / "console.log", timeout=120)
    assert not out.timed_out, "\n".join(seen[-20:])
    assert any("Xen version 4.17" in l for l in seen)


# A miniature toolstack: tools/configure (already generated, as in a tarball)
# writes config/Tools.mk and counts its runs; tools/Makefile compiles xl and
# installs it under the names dom0 needs (make -C tools / install DESTDIR=).
# The top-level configure writes config/Paths.mk and runs tools/configure, as Xen's does.
TOP_CONFIGURE = """#!/bin/sh
mkdir -p config
echo "prefix = /usr" > config/Paths.mk
cd tools && ./configure "$@"
"""
TOOLS_CONFIGURE = """#!/bin/sh
echo run >> ../configure-runs
mkdir -p ../config
echo "CONFIGURED = $*" > ../config/Tools.mk
"""
TOOLS_MAKEFILE = r"""
include ../config/Tools.mk
all: xl

xl: xl.c
	@echo "  CC      xl"
	@echo run >> ../make-runs
	@$(CC) -o $@ $<
install: all
	install -D -m 755 xl $(DESTDIR)/usr/sbin/xl
	install -D -m 755 xl $(DESTDIR)/usr/sbin/xenstored
	install -D -m 755 xl $(DESTDIR)/usr/sbin/xenconsoled
	mkdir -p $(DESTDIR)/usr/lib/x86_64-linux-gnu
	echo lib > $(DESTDIR)/usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0
	ln -sf libxenlight.so.4.17.0 $(DESTDIR)/usr/lib/x86_64-linux-gnu/libxenlight.so.4.17
.PHONY: all install
"""


@pytest.fixture
def xen_tools_tree(xen_tree, tmp_path):
    src = xen_tree()
    for rel, text in {"configure": TOP_CONFIGURE, "tools/configure": TOOLS_CONFIGURE,
                      "tools/configure.ac": "AC_INIT\n", "tools/Makefile": TOOLS_MAKEFILE,
                      "tools/xl.c": "int main(void) { return 0; }\n",
                      "tools/include/Makefile": "all:\n\t@echo run >> ../../include-runs\n"}.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if rel.endswith("configure"):
            p.chmod(0o755)
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "tools")
    return src


def _tools(ws, src, **kw):
    return build_xen.build_tools(ws, srctree=src, wrapper="none", jobs=1, **kw)


def test_tools_build_installs_into_dist_and_a_rerun_starts_nothing(tmp_ws, xen_tools_tree):
    ws = tmp_ws()
    res = _tools(ws, xen_tools_tree)
    assert not res.cached and (res.dist / "usr/sbin/xl").is_file()
    assert (res.dist / "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17").is_symlink()
    assert set(res.artifacts) == {"xl", "xenstored", "xenconsoled"}
    src_copy = res.build_dir / "src"
    assert "--libdir=/usr/lib/x86_64-linux-gnu" in (src_copy / "config/Tools.mk").read_text()
    again = _tools(ws, xen_tools_tree)
    assert again.cached and (src_copy / "make-runs").read_text() == "run\n"
    assert (src_copy / "include-runs").read_text() == "run\n"  # the public headers come first
    # The build happens in a copy: the worktree stays clean.
    assert git(xen_tools_tree, "status", "--porcelain") == ""


def test_tools_rebuild_copies_only_the_changed_file_and_configures_once(tmp_ws, xen_tools_tree):
    ws = tmp_ws()
    first = _tools(ws, xen_tools_tree)
    setup_c = first.build_dir / "src/xen/src/setup.c"
    before = setup_c.stat().st_mtime_ns
    (xen_tools_tree / "tools/xl.c").write_text("int main(void) { return 1; }\n")
    (xen_tools_tree / "xen/src/domain.c").unlink()
    res = _tools(ws, xen_tools_tree)
    assert not res.cached
    src_copy = res.build_dir / "src"
    assert (src_copy / "make-runs").read_text() == "run\nrun\n"
    assert (src_copy / "configure-runs").read_text() == "run\n"
    assert setup_c.stat().st_mtime_ns == before  # untouched: make sees it as unchanged
    assert not (src_copy / "xen/src/domain.c").exists()  # gone from the tree, gone from the copy


def test_tools_install_lacking_xl_is_a_build_error(tmp_ws, xen_tools_tree):
    ws = tmp_ws()
    mk = xen_tools_tree / "tools/Makefile"
    mk.write_text(mk.read_text().replace("install -D -m 755 xl $(DESTDIR)/usr/sbin/xl\n", ""))
    with pytest.raises(BuildError, match="lacks usr/sbin/xl"):
        _tools(ws, xen_tools_tree)
