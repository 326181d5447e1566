"""QEMU builds: Debian's xen flavour of configure, ninja progress, no-op reruns, failures.

The fast tests drive build_qemu.py with a miniature QEMU tree whose
`configure` behaves like QEMU's enough: run from the build folder, it records
its arguments, fails with an `ERROR:` line when a dependency is "missing",
and writes a build.ninja that real ninja runs with the compiler given by
--cc (real gcc). The heavy test builds Debian's QEMU 7.2
(`pytest -m heavy tests/test_build_qemu.py`).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from conftest import git
from kpatch_tool import build_qemu
from kpatch_tool.errors import BuildError, UsageError

CONFIGURE = r"""#!/bin/sh
src=$(cd "$(dirname -- "$0")"; pwd)
cc=gcc; targets=
echo run >> configure-runs
printf '%s\n' "$@" > configure-args
for a in "$@"; do
  case "$a" in
    --cc=*) cc="${a#--cc=}" ;;
    --target-list=*) targets="${a#--target-list=}" ;;
    --enable-xen) if [ -n "$FAKE_QEMU_NO_XEN" ]; then
        echo 'Run-time dependency xencontrol found: NO (tried pkgconfig)'
        echo '../meson.build:1:0: ERROR: Dependency "xencontrol" not found'
        echo 'ERROR: meson setup failed'; exit 1; fi ;;
  esac
done
{
  echo "rule cc"
  echo "  command = $cc -Wall -c \$in -o \$out"
  echo "  description = Compiling C object \$out"
  echo "rule link"
  echo "  command = $cc \$in -o \$out && echo run >> ninja-runs"
  echo "  description = Linking target \$out"
  objs=
  for c in "$src"/src/*.c; do
    o=$(basename "$c" .c).o; objs="$objs $o"
    echo "build $o: cc $c"
  done
  for t in $(echo "$targets" | tr , ' '); do
    echo "build qemu-system-${t%-softmmu}: link$objs"
  done
} > build.ninja
echo "Found ninja-1.11.1 at /usr/bin/ninja"
"""


@pytest.fixture
def qemu_tree(make_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("KPT_BUILD_LOCK", str(tmp_path / "build.lock"))
    monkeypatch.delenv("FAKE_QEMU_NO_XEN", raising=False)

    def make(where: str = "qemu"):
        files = {"configure": CONFIGURE, "meson.build": "project('qemu', 'c')\n", "VERSION": "7.2.99\n",
                 "src/vl.c": "int xen_init(void);\nint main(void) { return xen_init(); }\n",
                 "src/xen-all.c": "int xen_init(void) { return 0; }\n"}
        for i in range(6):
            files[f"src/dev{i}.c"] = f"int dev{i}(void) {{ return {i}; }}\n"
        repo = make_repo(where, files)
        os.chmod(repo / "configure", 0o755)
        git(repo, "commit", "-qam", "configure: executable")
        return repo

    return make


def _build(ws, src, **kw):
    kw.setdefault("wrapper", "none")
    return build_qemu.build_qemu(ws, srctree=src, jobs=1, **kw)


def test_default_configure_is_debians_xen_device_model_flavour(tmp_ws, qemu_tree):
    ws = tmp_ws()
    res = _build(ws, qemu_tree())
    got = (res.build_dir / "configure-args").read_text().split("\n")
    for arg in ("--enable-xen", "--target-list=i386-softmmu", "--disable-tcg", "--disable-kvm",
                "--without-default-features", "--meson=meson", "--cc=gcc"):
        assert arg in got
    assert res.targets == ["i386-softmmu"] and res.version == "7.2.99"
    assert res.qemu_system_i386.is_file() and res.binaries == [res.qemu_system_i386]
    art = res.artifacts["qemu-system-i386"]
    assert art.size == res.qemu_system_i386.stat().st_size and len(art.sha256) == 64


def test_ccache_is_given_to_configure_as_the_compiler(tmp_ws, qemu_tree):
    ws = tmp_ws()
    res = _build(ws, qemu_tree(), wrapper="ccache")
    assert "--cc=ccache gcc" in (res.build_dir / "configure-args").read_text().split("\n")


def test_rerun_with_nothing_changed_runs_neither_configure_nor_ninja(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    first = _build(ws, src)
    before = [(first.build_dir / f).read_text() for f in ("configure-runs", "ninja-runs")]
    start = time.monotonic()
    again = _build(ws, src)
    assert again.cached and time.monotonic() - start < 3
    assert [(first.build_dir / f).read_text() for f in ("configure-runs", "ninja-runs")] == before
    assert again.artifacts == first.artifacts


def test_a_changed_source_file_reruns_ninja_but_not_configure(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    first = _build(ws, src)
    (src / "src/dev3.c").write_text("int dev3(void) { return 33; }\n")
    res = _build(ws, src)
    assert not res.cached
    assert (first.build_dir / "configure-runs").read_text().count("run") == 1
    assert (first.build_dir / "ninja-runs").read_text().count("run") == 2


def test_progress_is_a_percentage_from_ninjas_counts(tmp_ws, qemu_tree):
    ws = tmp_ws()
    said = []
    _build(ws, qemu_tree(), progress=said.append)
    pcts = [int(m.group(1)) for s in said if (m := re.match(r"ninja (\d+)% \[(\d+)/(\d+)\]", s))]
    assert pcts and pcts[-1] == 100
    assert any("configuring QEMU 7.2.99" in s for s in said)


def test_other_configure_args_get_another_build_folder(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    xen = _build(ws, src)
    plain = _build(ws, src, enable_xen=False, target_list=["x86_64-softmmu", "i386-softmmu"])
    assert plain.build_dir != xen.build_dir
    assert "--enable-xen" not in plain.configure_args
    assert {p.name for p in plain.binaries} == {"qemu-system-x86_64", "qemu-system-i386"}
    assert _build(ws, src).cached  # the first folder is untouched


def test_xen_with_a_user_mode_target_is_a_usage_error(tmp_ws, qemu_tree):
    ws, src = tmp_ws(), qemu_tree()
    with pytest.raises(UsageError):
        _build(ws, src, target_list=["x86_64-linux-user"])
    with pytest.raises(UsageError):
        _build(ws, src, target_list=["i386"])
    assert not list(src.glob(".kpt-build-*")) and not (ws.cache_dir / "builds").exists()


def test_a_configure_failure_is_a_build_error_with_meson_s_message(tmp_ws, qemu_tree, monkeypatch):
    ws = tmp_ws()
    src = qemu_tree()
    monkeypatch.setenv("FAKE_QEMU_NO_XEN", "1")
    with pytest.raises(BuildError) as exc:
        _build(ws, src)
    assert exc.value.exit_code == 5 and "configure of qemu failed" in exc.value.message
    assert "xencontrol" in exc.value.message and "build.log" in exc.value.message
    # Configure is rerun once the dependency is there: the failed one is not trusted.
    monkeypatch.delenv("FAKE_QEMU_NO_XEN")
    assert not _build(ws, src).cached


def test_a_compile_error_is_a_build_error_naming_file_and_line(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    (src / "src/dev2.c").write_text("int dev2(void) {\n  return broken;\n}\n")
    with pytest.raises(BuildError) as exc:
        _build(ws, src)
    assert "dev2.c:2:" in exc.value.message and "broken" in exc.value.message
    assert exc.value.detail


def test_our_worktree_gets_the_build_folder_as_a_child_git_ignores(tmp_ws, qemu_tree):
    ws = tmp_ws()
    (ws.cache_dir / "worktrees" / "qemu").mkdir(parents=True)
    src = qemu_tree()
    ours = ws.cache_dir / "worktrees" / "qemu" / "0123456789ab"
    src.rename(ours)
    res = _build(ws, ours)
    assert res.build_dir.parent == ours and res.build_dir.name.startswith(".kpt-build-qemu-")
    assert git(ours, "status", "--porcelain", "--untracked-files=all") == ""
    assert _build(ws, ours).cached


@pytest.mark.slow
@pytest.mark.heavy
def test_real_qemu_xen_device_model_builds_and_a_rerun_is_a_no_op(project_ws):
    """Debian's QEMU 7.2 (`kpt tree import qemu`), configured as qemu-system-xen."""
    from kpatch_tool import proc, trees

    src = trees.checkout(project_ws, "qemu")
    res = build_qemu.build_qemu(project_ws, srctree=src)
    assert res.qemu_system_i386.is_file()
    out = proc.run([str(res.qemu_system_i386), "-machine", "help"], timeout=60)
    assert out.ok and "xenpv" in out.stdout
    start = time.monotonic()
    again = build_qemu.build_qemu(project_ws, srctree=src)
    assert again.cached and time.monotonic() - start < 10
    assert git(src, "status", "--porcelain") == ""
