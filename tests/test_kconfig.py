"""kconfig: fragments, the kconfiglib 6.x shim, evaluation, validation, cross-check.

The first part needs no kernel tree (fragment parser, a synthetic Kconfig tree
for the shim). The second part runs on the real Debian Linux 6.1 tree and
compares against the kernel's own C tools (`make tinyconfig`, `make
olddefconfig`); the tree is parsed once per module.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kconfiglib
import pytest
from click.testing import CliRunner

from kpatch_tool import kconfig, kconfig_compat
from kpatch_tool.errors import ConfigError, UsageError

# ---------------------------------------------------------------- fragments (no tree)


def test_fragment_parser_reads_values_comments_and_not_set(tmp_path):
    f = tmp_path / "a.config"
    f.write_text('# Help: demo\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=0x10\n'
                 'CONFIG_D="with \\"quote\\""\nCONFIG_E=-3\n  CONFIG_F=m  \n')
    got = [(a.symbol, a.value, a.line, a.quoted) for a in kconfig.parse_fragment(f)]
    assert got == [("A", "y", 3, False), ("B", "n", 4, False), ("C", "0x10", 5, False),
                   ("D", 'with "quote"', 6, True), ("E", "-3", 7, False), ("F", "m", 8, False)]


@pytest.mark.parametrize("line", ["XEN=y", "CONFIG_XEN y", "CONFIG_XEN=", 'CONFIG_S="open', "set CONFIG_X=y"])
def test_fragment_line_that_is_not_a_config_line_names_file_and_line(tmp_path, line):
    f = tmp_path / "bad.config"
    f.write_text(f"CONFIG_OK=y\n{line}\n")
    with pytest.raises(UsageError) as exc:
        kconfig.parse_fragment(f)
    assert f"{f}:2:" in exc.value.message


def test_missing_fragment_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        kconfig.parse_fragment(tmp_path / "nope.config")


def test_redefinition_across_fragments_warns_with_both_files_and_lines(tmp_path):
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_X=y\nCONFIG_Y=y\n")
    b.write_text("# c\nCONFIG_X=m\nCONFIG_Y=y\n")
    warns = kconfig.redefinitions(kconfig.parse_fragment(a) + kconfig.parse_fragment(b))
    assert len(warns) == 1  # the same value twice is not a redefinition
    assert f"{a}:1" in warns[0] and f"{b}:2" in warns[0] and "CONFIG_X" in warns[0]


def test_config_hash_ignores_comments_but_not_values():
    t1 = "#\n# header 1\n#\nCONFIG_A=y\n\n# menu\n# CONFIG_B is not set\n"
    t2 = "# other header\nCONFIG_A=y\n# CONFIG_B is not set\n"
    assert kconfig.config_hash(t1) == kconfig.config_hash(t2)
    assert kconfig.config_hash(t1) != kconfig.config_hash("CONFIG_A=m\n# CONFIG_B is not set\n")


def test_diff_configs_is_symbol_level():
    a = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=1\n"
    b = "# comment\nCONFIG_C=1\nCONFIG_A=m\nCONFIG_D=y\n"
    assert kconfig.diff_configs(a, b) == [("A", "y", "m"), ("B", "n", None), ("D", None, "y")]


def test_profile_fragments_adds_series_fragments_relative_to_the_series(tmp_ws):
    ws = tmp_ws()
    ws.configs_dir.mkdir()
    (ws.configs_dir / "profiles.toml").write_text('[profiles.p]\nbase = "tinyconfig"\nfragments = ["a.config"]\n')
    (ws.patches_dir / "s1").mkdir()
    (ws.patches_dir / "s1" / "series.toml").write_text('name = "s1"\nfragments = ["extra.config"]\n')
    (ws.patches_dir / "s1" / "extra.config").write_text("CONFIG_X=y\n")
    base, frags = kconfig.profile_fragments(ws, "p", ["s1"])
    assert base == "tinyconfig"
    assert frags == [ws.configs_dir / "a.config", ws.patches_dir / "s1" / "extra.config"]
    with pytest.raises(UsageError, match="did you mean p"):
        kconfig.profile_fragments(ws, "pp")


def test_a_series_gets_the_fragments_of_the_series_it_depends_on(tmp_ws):
    """Seen for real: vring-dma-api (depends on virtio-xenbus) was built without
    CONFIG_VIRTIO_XENBUS, so its domU had no driver for the devices it was to test."""
    ws = tmp_ws()
    ws.configs_dir.mkdir()
    (ws.configs_dir / "profiles.toml").write_text('[profiles.p]\nbase = "tinyconfig"\n')
    for name, deps in (("base1", []), ("mid", ["base1"]), ("top", ["mid", "base1"])):
        (ws.patches_dir / name).mkdir()
        (ws.patches_dir / name / "series.toml").write_text(
            f'name = "{name}"\ndepends = {deps!r}\nfragments = ["{name}.config"]\n'.replace("'", '"'))
        (ws.patches_dir / name / f"{name}.config").write_text("CONFIG_X=y\n")
    _, frags = kconfig.profile_fragments(ws, "p", ["top"])
    assert [f.name for f in frags] == ["base1.config", "mid.config", "top.config"]


def test_kernelversion_from_makefile(tmp_path):
    (tmp_path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION = -rc1\n")
    assert kconfig_compat.kernelversion(str(tmp_path)) == "6.1.192-rc1"


def test_cc_version_text_is_gccs_first_line_without_hash():
    text = kconfig_compat.cc_version_text("gcc")
    first = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                           env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout.splitlines()[0]
    assert text == first.replace("#", "") and text


# ---------------------------------------------------------------- the shim (synthetic tree)

SYNTH_KCONFIG = """\
mainmenu "Synthetic $(SRCARCH) $(KERNELVERSION)"
cc-option = $(shell,mkdir .tmp_$$ && rmdir .tmp_$$ && echo y || echo n)

config A
\tbool "a"

menuconfig MODULES
\tbool "modules"
\tdepends on A
\tmodules
\thelp
\t  bare `modules` as in Linux >= 5.13

config B
\ttristate "b"

config HAS_CWD_WRITABLE
\tdef_bool $(cc-option)

config WHERE
\tstring
\tdefault "$(shell,pwd)"
"""


@pytest.fixture
def synth_tree(tmp_path):
    src = tmp_path / "synth"
    src.mkdir()
    (src / "Kconfig").write_text(SYNTH_KCONFIG)
    (src / "Makefile").write_text("VERSION = 9\nPATCHLEVEL = 9\nSUBLEVEL = 0\nEXTRAVERSION =\n")
    return src


def test_stock_kconfiglib_rejects_bare_modules_and_the_shim_accepts_it(synth_tree, monkeypatch):
    monkeypatch.setenv("srctree", str(synth_tree))
    with pytest.raises(kconfiglib.KconfigError, match="modules"):
        kconfiglib.Kconfig("Kconfig", warn_to_stderr=False)
    tree = kconfig.load_tree(synth_tree)
    mod = tree.kconf.syms["MODULES"]
    assert tree.kconf.modules is mod
    # The `depends on` before the keyword and the help after it both survive.
    assert kconfig.value_expr(mod.direct_dep) == "A [=n]"
    assert "bare `modules`" in mod.nodes[0].help
    assert tree.kconf.mainmenu_text == "Synthetic x86 9.9.0"


def test_shell_macros_run_in_a_scratch_objtree_not_in_cwd_or_srctree(synth_tree, monkeypatch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # kconfiglib alone would run $(shell,...) here
    result = kconfig.evaluate(synth_tree, "allnoconfig", [])
    assert "CONFIG_HAS_CWD_WRITABLE=y" in result.config_text
    where = kconfig.read_values(result.config_text)["WHERE"].strip('"')
    assert where not in (str(elsewhere), str(synth_tree)) and Path(where).name.startswith("kpt-kconfig-")
    assert not list(synth_tree.glob(".tmp_*"))


def test_tristate_m_needs_modules_and_the_fix_is_suggested(synth_tree, tmp_path):
    frag = tmp_path / "m.config"
    frag.write_text("CONFIG_B=m\n")
    result = kconfig.evaluate(synth_tree, "allnoconfig", [frag])
    (p,) = result.problems
    # kconfig promotes m to y when MODULES is off.
    assert (p.symbol, p.requested, p.actual) == ("B", "m", "y")
    assert p.reason == "m needs CONFIG_MODULES=y" and p.unmet_expr == "MODULES [=n]"
    assert set(p.suggestions) == {"CONFIG_MODULES=y", "CONFIG_A=y"}


CHOICE_KCONFIG = """\
choice
\tprompt "pick"
\tdefault FIRST

config FIRST
\tbool "first"

config SECOND
\tbool "second"

endchoice
"""


@pytest.mark.parametrize("new_rule,expected", [(False, "FIRST"), (True, "SECOND")])
def test_choice_default_set_to_n_follows_the_trees_kconfig_version(tmp_path, new_rule, expected):
    """Linux >= 6.11 skips a default member explicitly set to n; older kconfig keeps it."""
    src = tmp_path / "choice"
    (src / "scripts/kconfig").mkdir(parents=True)
    (src / "Kconfig").write_text(CHOICE_KCONFIG)
    (src / "scripts/kconfig/symbol.c").write_text("list_for_each_entry(sym, &choice->choice_members, choice_link)\n"
                                                  if new_rule else "/* old kconfig */\n")
    base = tmp_path / "base.config"
    base.write_text("# CONFIG_FIRST is not set\n")
    result = kconfig.evaluate(src, str(base), [])
    assert f"CONFIG_{expected}=y" in result.config_text


CONDDEP_KCONFIG = """\
config MODULES
\tbool "modules"
\tmodules
\tdefault y

config FOO
\tbool "foo"

config BAR
\tbool "bar"

config BAZ
\ttristate "baz"

config BASIC
\tbool "basic"
\tdepends on FOO if BAR
\tdefault y

config BOTH
\tbool "both"
\tdepends on (FOO && BAR) if (FOO || BAR)
\tdefault y

config OPTIONAL
\ttristate "optional"
\tdepends on BAZ if BAZ
\tdefault y

config OLD_NAME
\tbool
\ttransitional
\thelp
\t  The old name of BASIC.
"""


@pytest.mark.parametrize("given,expected", [
    # FOO only matters when BAR is set: X || (Y = n), as Linux 7.0's menu_add_dep() builds it.
    ("FOO=y BAR=y BAZ=m", "BASIC=y BOTH=y OPTIONAL=m"),
    ("FOO=n BAR=y BAZ=y", "BASIC=- BOTH=- OPTIONAL=y"),
    ("FOO=n BAR=n BAZ=n", "BASIC=y BOTH=y OPTIONAL=y"),
])
def test_conditional_depends_on_and_transitional_parse_like_linux_7(tmp_path, given, expected):
    src = tmp_path / "cond"
    src.mkdir()
    (src / "Kconfig").write_text(CONDDEP_KCONFIG)
    base = tmp_path / "base.config"
    base.write_text("".join(f"CONFIG_{kv}\n" if not kv.endswith("=n") else f"# CONFIG_{kv[:-2]} is not set\n"
                            for kv in given.split()))
    text = kconfig.evaluate(src, str(base), []).config_text
    for kv in expected.split():
        name, value = kv.split("=")
        if value == "-":
            assert f"CONFIG_{name}=" not in text, name
        else:
            assert f"CONFIG_{name}={value}" in text, (name, text)
    # A transitional symbol is read, never written.
    assert "OLD_NAME" not in text


MEMCHOICE_KCONFIG = """\
config ARCH32
\tbool "32-bit"

config OLDCPU
\tbool "old cpu"

choice
\tprompt "High Memory Support"
\tdepends on ARCH32
\tdefault LOWMEM

config LOWMEM
\tbool "low"

config HIGHMEM
\tbool "high"
\tdepends on !OLDCPU

endchoice

config USES_HIGHMEM
\tbool "uses highmem"
\tdepends on HIGHMEM
"""


@pytest.fixture
def memchoice_tree(tmp_path):
    src = tmp_path / "memchoice"
    src.mkdir()
    (src / "Kconfig").write_text(MEMCHOICE_KCONFIG)
    return src


def test_member_of_a_choice_that_is_off_names_the_choice_and_its_dependency(memchoice_tree, tmp_path):
    """Seen for real: arch/x86/configs/xen.config's CONFIG_HIGHMEM64G=y over x86_64
    defconfig ended in `TypeError: 'Choice' object is not subscriptable`."""
    frag = _frag(tmp_path, "f.config", "CONFIG_HIGHMEM=y\nCONFIG_USES_HIGHMEM=y\n")
    result = kconfig.evaluate(memchoice_tree, "allnoconfig", [frag])
    high, uses = result.problems
    assert high.symbol == "HIGHMEM" and high.actual == "n"
    assert '<choice "High Memory Support" at Kconfig:7> is off' in high.reason
    assert high.unmet_expr == "ARCH32 [=n]"
    assert high.suggestions == ["CONFIG_ARCH32=y"]
    # The member is requested itself, so its needs are reported there, once.
    assert uses.reason == "unmet dependency" and uses.unmet_expr == "HIGHMEM [=n]"
    fixed = _frag(tmp_path, "fix.config", "CONFIG_ARCH32=y\n")
    assert kconfig.evaluate(memchoice_tree, "allnoconfig", [frag, fixed]).problems == []


def test_choice_member_not_taken_names_the_member_the_choice_selected(memchoice_tree, tmp_path):
    frag = _frag(tmp_path, "f.config", "CONFIG_ARCH32=y\nCONFIG_HIGHMEM=y\nCONFIG_LOWMEM=y\n")
    (p,) = kconfig.evaluate(memchoice_tree, "allnoconfig", [frag]).problems
    assert p.symbol == "HIGHMEM"
    assert '<choice "High Memory Support" at Kconfig:7> selected LOWMEM' in p.reason
    frag.write_text("CONFIG_ARCH32=y\n# CONFIG_LOWMEM is not set\n")
    (p,) = kconfig.evaluate(memchoice_tree, "allnoconfig", [frag]).problems
    assert p.symbol == "LOWMEM" and "selected LOWMEM" in p.reason and "another member" in p.reason


def test_member_with_its_own_unmet_dependency_names_the_choice(memchoice_tree, tmp_path):
    frag = _frag(tmp_path, "f.config", "CONFIG_ARCH32=y\nCONFIG_OLDCPU=y\nCONFIG_HIGHMEM=y\n")
    (p,) = kconfig.evaluate(memchoice_tree, "allnoconfig", [frag]).problems
    assert p.reason.startswith("unmet dependency (a member of <choice \"High Memory Support\"")
    assert "which selected LOWMEM" in p.reason
    assert "OLDCPU [=y]" in p.unmet_expr and "<choice" in p.unmet_expr


def test_tinyconfig_after_another_evaluation_in_the_same_process(memchoice_tree, tmp_path):
    """Seen on the kernel's own fragments: defconfig + X, then tinyconfig + X in one
    process ended in kconfiglib's `KeyError: None` (stale marks of the last load)."""
    (memchoice_tree / "kernel/configs").mkdir(parents=True)
    (memchoice_tree / "kernel/configs/tiny-base.config").write_text("CONFIG_OLDCPU=y\n")
    base = _frag(tmp_path, "base.config", "CONFIG_ARCH32=y\nCONFIG_OLDCPU=y\n")
    frag = _frag(tmp_path, "f.config", "CONFIG_OLDCPU=y\n")
    assert kconfig.evaluate(memchoice_tree, str(base), [frag]).problems == []
    result = kconfig.evaluate(memchoice_tree, "tinyconfig", [frag])
    assert result.problems == [] and "CONFIG_OLDCPU=y" in result.config_text


def test_cli_exits_4_on_a_choice_member_and_explain_shows_the_choice(memchoice_tree, tmp_path, tmp_ws):
    from kpatch_tool.cli import main

    ws = tmp_ws()
    frag = _frag(tmp_path, "f.config", "CONFIG_HIGHMEM=y\n")
    res = CliRunner().invoke(main, ["-w", str(ws.root), "config", "--base", "allnoconfig", "-f", str(frag),
                                    "--srctree", str(memchoice_tree), "--no-cross-check",
                                    "-o", str(tmp_path / "o.config")])
    assert res.exit_code == 4, res.output
    assert "High Memory Support" in res.output and "Traceback" not in res.output
    info = kconfig.explain(memchoice_tree, "HIGHMEM", "allnoconfig")
    assert '<choice "High Memory Support" at Kconfig:7> [=n]' in info.depends_on


def test_unparsable_kconfig_is_a_config_error_naming_file_line_and_construct(tmp_path):
    src = tmp_path / "broken"
    (src / "sub").mkdir(parents=True)
    (src / "Kconfig").write_text('source "sub/Kconfig"\n')
    (src / "sub" / "Kconfig").write_text("config X\n\tbool \"x\"\n\tfrobnicate\n")
    with pytest.raises(ConfigError) as exc:
        kconfig.load_tree(src)
    assert "sub/Kconfig:3" in exc.value.message and "frobnicate" in exc.value.message


def test_a_folder_without_kconfig_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no Kconfig"):
        kconfig.load_tree(tmp_path)


# ---------------------------------------------------------------- the real Linux 6.1 tree


@pytest.fixture(scope="module")
def linux61(linux_src):
    """Linux 6.1 parsed once for this module (about 4 s)."""
    kconfig.load_tree(linux_src)
    return linux_src


def _frag(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


PROFILES = ["guest", "xen-dom0", "xen-domU"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_validates_and_is_a_fixed_point_of_make_olddefconfig(project_ws, linux61, tmp_path, profile):
    out = tmp_path / f"{profile}.config"
    result = kconfig.config_for_profile(project_ws, linux61, profile, output=out)
    assert result.problems == [] and result.warnings == []
    assert kconfig.cross_check(linux61, out) == []


@pytest.mark.parametrize("base,target", [("tinyconfig", "tinyconfig"), ("defconfig", "x86_64_defconfig")])
def test_base_equals_the_kernels_own_make_target(linux61, tmp_path, base, target):
    result = kconfig.evaluate(linux61, base, [])
    theirs = kconfig.kbuild_config(linux61, target)
    assert kconfig.normalise(result.config_text) == kconfig.normalise(theirs)


def test_cross_check_reports_a_config_kbuild_would_change(linux61, tmp_path):
    result = kconfig.evaluate(linux61, "tinyconfig", [])
    bad = tmp_path / "bad.config"
    # tinyconfig is 32-bit; turning 64BIT on makes olddefconfig add X86_64.
    bad.write_text(result.config_text.replace("# CONFIG_64BIT is not set", "CONFIG_64BIT=y"))
    diff = kconfig.cross_check(linux61, bad)
    assert "+CONFIG_X86_64=y" in diff


def test_xen_dom0_from_tinyconfig_needs_acpi(linux61, tmp_path):
    frag = _frag(tmp_path, "dom0.config", "CONFIG_64BIT=y\nCONFIG_HYPERVISOR_GUEST=y\nCONFIG_PARAVIRT=y\n"
                 "CONFIG_XEN=y\nCONFIG_XEN_PV=y\nCONFIG_PCI=y\nCONFIG_XEN_DOM0=y\n")
    result = kconfig.evaluate(linux61, "tinyconfig", [frag])
    (p,) = result.problems
    assert (p.symbol, p.requested, p.actual, p.reason) == ("XEN_DOM0", "y", "n", "unmet dependency")
    assert "ACPI [=n]" in p.unmet_expr and "XEN_PV [=y]" in p.unmet_expr
    assert p.defined_at == ["arch/x86/xen/Kconfig:88"]
    assert (p.fragment, p.line) == (str(frag), 7)
    assert p.suggestions == ["CONFIG_ACPI=y"]


def test_blkfront_needs_blk_dev_and_block_and_grant_dma_ops_has_no_prompt(linux61, tmp_path):
    frag = _frag(tmp_path, "blk.config", "CONFIG_64BIT=y\nCONFIG_HYPERVISOR_GUEST=y\nCONFIG_PARAVIRT=y\n"
                 "CONFIG_XEN=y\nCONFIG_XEN_PV=y\nCONFIG_XEN_BLKDEV_FRONTEND=y\nCONFIG_XEN_GRANT_DMA_OPS=y\n")
    result = kconfig.evaluate(linux61, "tinyconfig", [frag])
    blk, grant = result.problems
    assert blk.symbol == "XEN_BLKDEV_FRONTEND"
    assert set(blk.suggestions) == {"CONFIG_BLK_DEV=y", "CONFIG_BLOCK=y"}
    assert grant.symbol == "XEN_GRANT_DMA_OPS"
    assert grant.reason == "no prompt; selected by XEN_VIRTIO"
    assert grant.suggestions[0] == "CONFIG_XEN_VIRTIO=y"
    # The suggestions were verified by evaluating with them added.
    fixed = _frag(tmp_path, "fix.config", "\n".join(blk.suggestions + grant.suggestions) + "\n")
    assert kconfig.evaluate(linux61, "tinyconfig", [frag, fixed]).problems == []


def test_typo_wrong_type_and_redefinition(linux61, tmp_path):
    a = _frag(tmp_path, "a.config", "CONFIG_PRINTKK=y\nCONFIG_NR_CPUS=yes\nCONFIG_64BIT=y\n")
    b = _frag(tmp_path, "b.config", "# CONFIG_64BIT is not set\n")
    result = kconfig.evaluate(linux61, "tinyconfig", [a, b])
    by = {p.symbol: p for p in result.problems}
    assert set(by) == {"PRINTKK", "NR_CPUS"}
    assert by["PRINTKK"].actual is None and "CONFIG_PRINTK?" in by["PRINTKK"].reason
    assert "int" in by["NR_CPUS"].reason and by["NR_CPUS"].line == 2
    (w,) = result.warnings
    assert f"{a}:3" in w and f"{b}:1" in w
    assert "# CONFIG_64BIT is not set" in result.config_text  # the later line won


def test_config_for_profile_writes_the_config_even_when_it_fails(project_ws, linux61, tmp_path):
    extra = _frag(tmp_path, "x.config", "CONFIG_XEN_GRANT_DMA_OPS=y\n")
    out = tmp_path / "out" / "guest.config"
    with pytest.raises(ConfigError) as exc:
        kconfig.config_for_profile(project_ws, linux61, "guest", [extra], output=out)
    assert exc.value.exit_code == 4 and "XEN_VIRTIO" in exc.value.detail
    assert "CONFIG_64BIT=y" in out.read_text()


def test_explain_shows_dependencies_selectors_and_why(linux61):
    info = kconfig.explain(linux61, "CONFIG_XEN_GRANT_DMA_OPS", "tinyconfig")
    assert info.type == "bool" and info.prompts == []
    assert info.selected_by[0].startswith("XEN_VIRTIO [=n]")
    assert info.selects == ["DMA_OPS"]
    assert info.value == "n"
    nr = kconfig.explain(linux61, "NR_CPUS", "tinyconfig")
    assert nr.why.startswith("prompt hidden (SMP [=n]") and "NR_CPUS_DEFAULT" in nr.why


def test_cli_config_profile_explain_and_diff(project_ws, linux61, tmp_path):
    from kpatch_tool.cli import main

    runner = CliRunner()
    ws = ["-w", str(project_ws.root)]
    guest = tmp_path / "guest.config"
    res = runner.invoke(main, [*ws, "config", "guest", "--srctree", str(linux61), "-o", str(guest)])
    assert res.exit_code == 0, res.output
    assert guest.is_file()
    bad = _frag(tmp_path, "bad.config", "CONFIG_XEN_DOM0=y\n")
    res = runner.invoke(main, [*ws, "config", "--base", "tinyconfig", "-f", str(bad), "--srctree", str(linux61),
                               "-o", str(tmp_path / "bad.out")])
    assert res.exit_code == 4
    assert "XEN_DOM0" in res.output and (tmp_path / "bad.out").is_file()
    res = runner.invoke(main, [*ws, "config", "explain", "XEN_DOM0", "--profile", "xen-dom0", "--srctree", str(linux61)])
    assert res.exit_code == 0 and "arch/x86/xen/Kconfig:88" in res.output
    res = runner.invoke(main, [*ws, "config", "diff", str(guest), str(tmp_path / "bad.out")])
    assert res.exit_code == 0 and "CONFIG_VIRTIO_PCI: y -> -" in res.output


# ---------------------------------------------------------------- Linux 6.12 (slow: imports a second tree)


def _other_tree(project_ws, name):
    from kpatch_tool import trees

    trees.import_tree(project_ws, name)
    src = trees.checkout(project_ws, name)
    kconfig.load_tree(src)
    return src


@pytest.fixture(scope="module")
def linux612(project_ws):
    return _other_tree(project_ws, "linux-6.12")


@pytest.fixture(scope="module")
def linux72(project_ws):
    """7.2's Kconfig has `transitional` and `depends on X if Y`, which kconfiglib 14.1 does not know."""
    return _other_tree(project_ws, "linux-7.2")


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["linux612", "linux72"])
def test_newer_trees_bases_and_profiles_match_their_c_tools(request, project_ws, tree, tmp_path):
    src = request.getfixturevalue(tree)
    for base, target in [("tinyconfig", "tinyconfig"), ("defconfig", "x86_64_defconfig")]:
        ours = kconfig.evaluate(src, base, []).config_text
        assert kconfig.normalise(ours) == kconfig.normalise(kconfig.kbuild_config(src, target)), base
    for profile in PROFILES:
        out = tmp_path / f"{profile}.config"
        assert kconfig.config_for_profile(project_ws, src, profile, output=out).problems == []
        assert kconfig.cross_check(src, out) == [], profile


# ---------------------------------------------------------------- the kernel's own fragments (slow)


def _kernel_fragments(src: Path) -> list[Path]:
    return sorted((src / "kernel/configs").glob("*.config")) + sorted((src / "arch/x86/configs").glob("*.config"))


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["linux61", "linux612", pytest.param("linux72", marks=pytest.mark.heavy)])
@pytest.mark.parametrize("base", ["defconfig", "tinyconfig"])
def test_every_fragment_the_kernel_ships_is_evaluated_like_kbuild(request, tree, base):
    """Each kernel/configs and arch/x86/configs fragment over the base: never a
    crash; every value that does not take is explained; the .config is what
    merge_config.sh -m + `make olddefconfig` makes of the same inputs.
    (Run by pytest on 2026-12-03: 12 fragments per tree, 48 evaluations, all equal
    to kbuild's; 9 min on 2 shared cores.)"""
    src = request.getfixturevalue(tree)
    frags = _kernel_fragments(src)
    assert len(frags) >= 10
    base_text = kconfig.evaluate(src, base, []).config_text
    for frag in frags:
        result = kconfig.evaluate(src, base, [frag])
        for p in result.problems:
            assert p.reason and p.fragment == str(frag), (frag, p)
            if p.symbol in ("HIGHMEM64G", "HIGHMEM4G"):
                assert "High Memory Support" in p.reason
        theirs = kconfig.kbuild_config(src, "olddefconfig", base_text + frag.read_text())
        assert kconfig.normalise(result.config_text) == kconfig.normalise(theirs), frag
