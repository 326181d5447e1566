"""QEMU builds: Debian's xen flavour of configure, ninja progress, no-op reruns, failures.

The fast tests drive build_qemu.py with a miniature QEMU tree whose
`configure` behaves like QEMU's enough: run from the build folder, it records
its arguments, fails with an `ERROR:` line when a dependency is "missing",
and writes a build.ninja that real ninja runs with the compiler given by
--cc (real gcc). The heavy test builds Debian's QEMU 7.2 and sid's 10.2
(`pytest -m heavy tests/test_build_qemu.py`).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from conftest import git
from kpatch_tool import build as buildmod
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
@pytest.mark.parametrize("tree", ["qemu", "qemu-10.2"])
def test_real_qemu_xen_device_model_builds_and_a_rerun_is_a_no_op(project_ws, tree):
    """Debian's QEMU 7.2 and sid's 10.2 (meson 1.9.0 from PyPI), configured as qemu-system-xen."""
    from kpatch_tool import proc, trees

    src = trees.checkout(project_ws, tree)
    res = build_qemu.build_qemu(project_ws, srctree=src, tree=tree)
    assert res.qemu_system_i386.is_file()
    out = proc.run([str(res.qemu_system_i386), "-machine", "help"], timeout=60)
    assert out.ok and "xenpv" in out.stdout
    start = time.monotonic()
    again = build_qemu.build_qemu(project_ws, srctree=src, tree=tree)
    assert again.cached and time.monotonic() - start < 10
    assert git(src, "status", "--porcelain") == ""


# --------------------------------------------------------------------------
# kpt build --each SERIES --tree qemu

# Recorded from ninja 1.11 building Debian's QEMU 7.2 (hw/virtio/virtio-xen.c
# given an unused variable): ninja prints an edge's `[N/M]` line when the edge
# finishes, then everything that command printed.
RECORDED_STEP = """\
[1/4] Generating qemu-version.h with a custom command (wrapped by meson to capture output)
[2/4] Compiling C object libcommon.fa.p/hw_virtio_virtio-xen.c.o
../hw/virtio/virtio-xen.c: In function 'virtio_xen_realize':
../hw/virtio/virtio-xen.c:412:9: warning: unused variable 'rc' [-Wunused-variable]
  412 |     int rc;
      |         ^~
In file included from ../hw/virtio/virtio-xen.c:20:
../include/hw/xen/interface/io/virtio.h:88:5: warning: 'packed' attribute ignored [-Wattributes]
   88 |     uint32_t ring_ref[] __attribute__((packed));
      |     ^~~~~~~~
[3/4] Compiling C object libcommon.fa.p/hw_xen_xen-bus.c.o
[4/4] Linking target qemu-system-i386
"""


def _watch(text: str) -> build_qemu.NinjaWatcher:
    w = build_qemu.NinjaWatcher(None)
    for line in text.splitlines():
        w(line)
    return w


def test_ninja_watcher_gives_each_warning_to_the_object_that_printed_it():
    w = _watch(RECORDED_STEP)
    assert w.compiled == ["libcommon.fa.p/hw_virtio_virtio-xen.c.o", "libcommon.fa.p/hw_xen_xen-bus.c.o"]
    unit = w.units["libcommon.fa.p/hw_virtio_virtio-xen.c.o"]
    assert len(unit) == 2 and "unused variable 'rc'" in unit[0] and "virtio.h:88:5" in unit[1]
    assert w.units["libcommon.fa.p/hw_xen_xen-bus.c.o"] == []
    assert len(w.warnings) == 2


def test_ninja_watcher_reads_gcc_s_coloured_diagnostics():
    coloured = ("[7/9] Compiling C object libcommon.fa.p/hw_xen_xen-bus.c.o\n"
                "\x1b[01m\x1b[K../hw/xen/xen-bus.c:51:13:\x1b[m\x1b[K \x1b[01;35m\x1b[Kwarning: \x1b[m\x1b[K"
                "unused variable '\x1b[01m\x1b[Kx\x1b[m\x1b[K' [\x1b[01;35m\x1b[K-Wunused-variable\x1b[m\x1b[K]\n")
    w = _watch(coloured)
    assert w.units["libcommon.fa.p/hw_xen_xen-bus.c.o"] == [
        "../hw/xen/xen-bus.c:51:13: warning: unused variable 'x' [-Wunused-variable]"]


def _step(obj: str, *warnings: str) -> str:
    return "\n".join([f"[1/2] Compiling C object {obj}", *warnings, "[2/2] Linking target qemu-system-i386"])


A = "libcommon.fa.p/hw_virtio_virtio-xen.c.o"
B = "libcommon.fa.p/hw_xen_xen-bus.c.o"
HDR_WARN = "../include/hw/xen/interface/io/virtio.h:88:5: warning: 'packed' attribute ignored [-Wattributes]"


def test_ledger_new_warnings_come_from_the_objects_recompiled_at_that_step():
    ledger = build_qemu.UnitWarningLedger()
    ledger.update_units(_watch(RECORDED_STEP).units)
    # The patch only touches xen-bus.c: virtio-xen.c's two warnings stay, one is added.
    new, fixed = ledger.update_units(_watch(_step(B, "../hw/xen/xen-bus.c:51:13: warning: unused variable 'x' "
                                                     "[-Wunused-variable]")).units)
    assert new == {"../hw/xen/xen-bus.c: unused variable 'x' [-Wunused-variable]"} and fixed == set()
    assert len(ledger.all()) == 3


def test_ledger_a_recompiled_object_without_its_warning_fixes_it():
    ledger = build_qemu.UnitWarningLedger()
    ledger.update_units(_watch(RECORDED_STEP).units)
    new, fixed = ledger.update_units(_watch(_step(A, HDR_WARN)).units)
    assert new == set()
    assert fixed == {"../hw/virtio/virtio-xen.c: unused variable 'rc' [-Wunused-variable]"}


def test_ledger_a_warning_that_moved_lines_is_neither_new_nor_fixed():
    ledger = build_qemu.UnitWarningLedger()
    ledger.update_units(_watch(RECORDED_STEP).units)
    moved = "../hw/virtio/virtio-xen.c:430:9: warning: unused variable 'rc' [-Wunused-variable]"
    assert ledger.update_units(_watch(_step(A, moved, HDR_WARN)).units) == (set(), set())


def test_ledger_a_header_warning_seen_again_from_another_object_is_not_new():
    ledger = build_qemu.UnitWarningLedger()
    ledger.update_units(_watch(RECORDED_STEP).units)
    new, fixed = ledger.update_units(_watch(_step(B, HDR_WARN)).units)
    assert new == set() and fixed == set()
    # Gone from virtio-xen.c, still printed for xen-bus.c: not fixed either.
    new, fixed = ledger.update_units(_watch(_step(A, "../hw/virtio/virtio-xen.c:412:9: warning: unused variable "
                                                     "'rc' [-Wunused-variable]")).units)
    assert new == set() and fixed == set()


def _stack(src, steps):
    base = git(src, "rev-parse", "HEAD").strip()
    for subject, path, text in steps:
        (src / path).write_text(text)
        git(src, "commit", "-q", "-am", subject)
    return base


EACH_STEPS = [
    ("dev1: add an unused variable", "src/dev1.c", "int dev1(void) { int unused; return 1; }\n"),
    ("dev2: harmless change", "src/dev2.c", "int dev2(void) { return 2 + 0; }\n"),
    ("dev1: drop the unused variable", "src/dev1.c", "int dev1(void) { return 1; }\n"),
    ("dev3: break the build", "src/dev3.c", "int dev3(void) { return missing; }\n"),
    ("dev4: never built", "src/dev4.c", "int dev4(void) { return 44; }\n"),
]


def test_each_reports_warnings_per_patch_and_stops_at_the_first_that_breaks(tmp_ws, qemu_tree):
    """The fake configure and real ninja + gcc, in a bisect worktree of ours."""
    ws = tmp_ws()
    src = qemu_tree()
    base = _stack(src, EACH_STEPS)
    said = []
    steps = build_qemu.build_each_qemu(ws, worktree=src, base=base, wrapper="none", jobs=1, progress=said.append)
    assert [s.status for s in steps] == ["builds", "builds", "builds", "fails"]
    assert [s.subject for s in steps] == [s[0] for s in EACH_STEPS[:4]]
    assert len(steps[0].new_warnings) == 1 and re.search(r"unused variable .unused.", steps[0].new_warnings[0])
    assert "dev1.c" in steps[0].new_warnings[0]
    # dev2.c recompiled: dev1.c's warning is still there, neither new nor fixed.
    assert steps[1].new_warnings == [] and steps[1].fixed_warnings == []
    assert steps[2].fixed_warnings == steps[0].new_warnings and steps[2].new_warnings == []
    assert "dev3: break the build" in steps[3].error and "dev3.c:1:" in steps[3].error
    assert all(s.seconds > 0 for s in steps)
    # Ours is separate: the user's tree is still at its tip, with no build folder in it.
    assert git(src, "log", "-1", "--format=%s").strip() == "dev4: never built"
    assert git(src, "status", "--porcelain", "--untracked-files=all") == ""
    each = buildmod.each_dir_for(ws, "qemu", src)
    assert each.parent == ws.cache_dir / "worktrees" / "qemu" and each.name.startswith("each-")
    build_dir, = each.glob(".kpt-build-qemu-*")
    assert (build_dir / "configure-runs").read_text().count("run") == 1
    assert git(each, "status", "--porcelain", "--untracked-files=all") == ""
    assert any("building the base" in s for s in said) and any("patch 4/5: dev3" in s for s in said)


def test_each_rerun_reuses_the_worktree_and_configures_nothing(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    base = _stack(src, EACH_STEPS[:3])
    first = build_qemu.build_each_qemu(ws, worktree=src, base=base, wrapper="none", jobs=1)
    again = build_qemu.build_each_qemu(ws, worktree=src, base=base, wrapper="none", jobs=1)
    assert [s.status for s in again] == ["builds"] * 3
    assert [(s.new_warnings, s.fixed_warnings) for s in again] == [(s.new_warnings, s.fixed_warnings) for s in first]
    build_dir, = buildmod.each_dir_for(ws, "qemu", src).glob(".kpt-build-qemu-*")
    assert (build_dir / "configure-runs").read_text().count("run") == 1


def test_each_with_nothing_to_build_is_a_usage_error(tmp_ws, qemu_tree):
    ws = tmp_ws()
    src = qemu_tree()
    with pytest.raises(UsageError, match="no commits"):
        build_qemu.build_each_qemu(ws, worktree=src, base="HEAD", wrapper="none", jobs=1)


def test_each_holds_the_machine_wide_build_lock(tmp_ws, qemu_tree, tmp_path):
    import fcntl

    ws = tmp_ws()
    src = qemu_tree()
    base = _stack(src, EACH_STEPS[:1])
    said = []
    with open(tmp_path / "build.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        import threading

        t = threading.Timer(1.0, lambda: fcntl.flock(fh, fcntl.LOCK_UN))
        t.start()
        start = time.monotonic()
        steps = build_qemu.build_each_qemu(ws, worktree=src, base=base, wrapper="none", jobs=1,
                                           progress=said.append)
        t.join()
    assert time.monotonic() - start >= 1.0 and [s.status for s in steps] == ["builds"]
    assert "waiting for another" in said[0]


def _kpt(ws, *args):
    from click.testing import CliRunner

    from kpatch_tool.cli import main

    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def test_cli_each_on_a_qemu_tree_builds_the_series_own_patches_and_exits_5(tmp_ws, qemu_tree):
    """`kpt build each top --tree qemu`: top depends on demo; only top's patches are rows."""
    from kpatch_tool import export

    src = qemu_tree("qemu-src")
    git(src, "tag", "v1")
    git(src, "checkout", "-q", "-b", "work")
    _stack(src, EACH_STEPS[1:2])
    git(src, "checkout", "-q", "-b", "work2")
    _stack(src, [EACH_STEPS[0], EACH_STEPS[3]])
    git(src, "checkout", "-q", "main")
    ws = tmp_ws(f'[trees.qemu]\nsource = "{src}"\n')
    export.import_stack(ws, "v1..work", "qemu", name="demo")
    top, _ = export.import_stack(ws, "work..work2", "qemu", name="top", base="v1")
    top.toml_path.write_text(top.toml_path.read_text().replace("depends = []", 'depends = ["demo"]'))

    r = _kpt(ws, "build", "each", "top", "--tree", "qemu", "--wrapper", "none", "-j1")
    assert r.exit_code == 5, r.output
    rows = [l for l in r.output.splitlines() if re.match(r"\s*\d+ ", l)]
    assert len(rows) == 2, r.output
    assert re.match(r"\s*1 builds\s+\+1 -0 warnings\s+[\d.]+s\s+dev1: add an unused variable", rows[0])
    assert re.match(r"\s*2 FAILS .*dev3: break the build", rows[1])
    assert "new warning:" in r.output and re.search(r"unused variable .unused.", r.output)
    assert "not every patch builds cleanly" in r.output
    # The group's --each takes the same path.
    r2 = _kpt(ws, "build", "--each", "top", "--tree", "qemu", "--wrapper", "none", "-j1")
    assert r2.exit_code == 5 and len([l for l in r2.output.splitlines() if re.match(r"\s*\d+ ", l)]) == 2


def test_cli_each_refuses_an_unknown_tree_and_an_unknown_series_on_a_xen_tree(tmp_ws, qemu_tree):
    src = qemu_tree()
    ws = tmp_ws(f'[trees.xen]\nsource = "{src}"\n')
    r = _kpt(ws, "build", "each", "any", "--tree", "nope")
    assert r.exit_code == 2 and "no tree 'nope'" in r.output
    # A Xen tree is built patch by patch too (build_xen.build_each_xen): the series must exist.
    r = _kpt(ws, "build", "each", "any", "--tree", "xen")
    assert r.exit_code == 2 and "any" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.heavy
def test_real_virtio_xenbus_qemu_patches_each_build(project_ws):
    """Debian's QEMU 7.2 with the virtio-xenbus series: every patch builds, none adds a warning."""
    from kpatch_tool import apply as applymod

    ar = applymod.apply_series(project_ws, "virtio-xenbus", tree="qemu")
    steps = build_qemu.build_each_qemu(project_ws, worktree=ar.worktree, base=ar.series_base)
    n = int(git(ar.worktree, "rev-list", "--count", f"{ar.series_base}..HEAD"))
    assert len(steps) == n >= 5
    assert [s.status for s in steps] == ["builds"] * n, [s.error for s in steps]
    assert all(not s.new_warnings for s in steps), [s.new_warnings for s in steps]
    assert git(buildmod.each_dir_for(project_ws, "qemu", ar.worktree), "status", "--porcelain") == ""


def test_a_tree_with_pythondeps_gets_the_hosts_python_when_its_meson_is_accepted(tmp_ws, qemu_tree):
    ws, src = tmp_ws(), qemu_tree()
    (src / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=0.50", installed = "1.9.0" }\n')
    res = _build(ws, src)
    got = (res.build_dir / "configure-args").read_text().split("\n")
    assert f"--python={build_qemu.proc.which('python3')}" in got
    assert "--disable-download" in got and "--disable-werror" in got
    assert not any(a.startswith(("--meson=", "--with-git-submodules")) for a in got)
    assert "meson" not in res.identity and not (ws.cache_dir / "pytools").exists()


def test_a_tree_whose_meson_the_host_lacks_gets_kpts_venv_in_its_identity(tmp_ws, qemu_tree, tmp_path, monkeypatch):
    from test_pytools import make_wheel

    index = tmp_path / "index"
    make_wheel(index, "meson", "99.1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    ws, src = tmp_ws(), qemu_tree()
    (src / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=99", installed = "99.1.0" }\n')
    res = _build(ws, src)
    venv = ws.cache_dir / "pytools" / "meson-99.1.0"
    assert f"--python={venv}/bin/python3" in (res.build_dir / "configure-args").read_text().split("\n")
    assert res.identity["meson"]["version"] == "99.1.0"
    assert _build(ws, src).cached
