"""Kernel configuration: base + fragments evaluated with kconfiglib, validated.

A configuration is made the way kbuild makes it: a base (`tinyconfig`,
`allnoconfig`, `defconfig` or a .config file), then the fragments merged over it
(merge_config.sh -m), then `olddefconfig`. kconfiglib does the evaluation in
process (one parse of the tree, ~3-4 s, cached per source tree); the shim in
kconfig_compat.py lets it read Linux 6.x.

Unlike merge_config.sh, a value that did not take is an error: every symbol a
fragment asks for must end with that value, and each problem says why
(unmet `depends on` with each term's value, no prompt / selected by, type,
range, unknown symbol with close names) and which symbols to add, found by
re-evaluating until the request holds. The written .config can be checked
against the kernel's own `make olddefconfig` (cross_check): it must be a fixed
point, or our evaluation differs from kbuild's.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tempfile
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import kconfiglib
from kconfiglib import BOOL, HEX, INT, STRING, TRISTATE, TYPE_TO_STR, expr_str, expr_value, split_expr

from kpatch_tool import kconfig_compat, proc, safefs
from kpatch_tool.errors import ConfigError, UsageError

BASES = ("tinyconfig", "allnoconfig", "defconfig")
TRI = {"n": 0, "m": 1, "y": 2}
_SET_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_HEX_RE = re.compile(r"^(0[xX])?[0-9a-fA-F]+$")


# --------------------------------------------------------------------------
# models


@dataclass
class Assignment:
    """One line of a fragment: CONFIG_<symbol>=<value> (n for `is not set`)."""

    symbol: str
    value: str  # y/m/n, digits, 0x.., or the unescaped string
    fragment: Path
    line: int
    quoted: bool = False  # written as "..." (a string value)

    @property
    def where(self) -> str:
        return f"{self.fragment}:{self.line}"

    def config_line(self) -> str:
        if self.value == "n" and not self.quoted:
            return f"# CONFIG_{self.symbol} is not set"
        if self.quoted:
            return f'CONFIG_{self.symbol}="{kconfiglib.escape(self.value)}"'
        return f"CONFIG_{self.symbol}={self.value}"


@dataclass
class ConfigProblem:
    symbol: str
    requested: str
    actual: str | None  # None: the tree has no such symbol
    reason: str
    defined_at: list[str] = field(default_factory=list)
    unmet_expr: str | None = None  # the dependency, each term with its value
    suggestions: list[str] = field(default_factory=list)  # CONFIG_X=y lines to add
    fragment: str = ""
    line: int = 0

    def render(self) -> str:
        loc = f"{self.fragment}:{self.line}: " if self.fragment else ""
        head = f"{loc}CONFIG_{self.symbol}: requested {self.requested}, got {self.actual if self.actual is not None else '(no such symbol)'}"
        lines = [head, f"    why: {self.reason}"]
        if self.unmet_expr:
            lines.append(f"    depends on: {self.unmet_expr}")
        if self.defined_at:
            lines.append(f"    defined at: {', '.join(self.defined_at)}")
        if self.suggestions:
            lines.append(f"    add: {' '.join(self.suggestions)}")
        return "\n".join(lines)


@dataclass
class ConfigResult:
    config_text: str
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config_hash: str = ""
    base: str = ""
    fragments: list[Path] = field(default_factory=list)
    srctree: Path | None = None
    assignments: list[Assignment] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        return "\n".join(p.render() for p in self.problems)


# --------------------------------------------------------------------------
# fragments


def parse_fragment(path: Path) -> list[Assignment]:
    """The assignments of a fragment; a line that is not one is a UsageError."""
    path = Path(path)
    from kpatch_tool.userfile import read_text

    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path}: config fragment not found")
    return parse_fragment_text(read_text(path, "config fragment"), path)


def parse_fragment_text(text: str, path: Path = Path("<fragment>")) -> list[Assignment]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _UNSET_RE.match(line)
        if m:
            out.append(Assignment(m.group(1), "n", path, n))
            continue
        if line.startswith("#"):
            continue
        m = _SET_RE.match(line)
        if not m:
            raise UsageError(f"{path}:{n}: not a config line: {raw.strip()!r}",
                             detail="expected CONFIG_FOO=y|m|n|<number>|0x<hex>|\"string\", "
                                    "'# CONFIG_FOO is not set' or a # comment")
        name, val = m.groups()
        if val.startswith('"'):
            sm = re.match(r'^"((?:[^"\\]|\\.)*)"$', val)
            if not sm:
                raise UsageError(f"{path}:{n}: unterminated string in {raw.strip()!r}")
            out.append(Assignment(name, kconfiglib.unescape(sm.group(1)), path, n, quoted=True))
        elif val == "":
            raise UsageError(f"{path}:{n}: CONFIG_{name} has no value")
        else:
            out.append(Assignment(name, val, path, n))
    return out


def redefinitions(assignments: list[Assignment]) -> list[str]:
    """Warnings for a symbol set differently by two lines (the later one wins)."""
    seen: dict[str, Assignment] = {}
    warns = []
    for a in assignments:
        prev = seen.get(a.symbol)
        if prev is not None and (prev.value, prev.quoted) != (a.value, a.quoted):
            warns.append(f"CONFIG_{a.symbol} redefined: {prev.value!r} at {prev.where}, "
                         f"{a.value!r} at {a.where} (the later one wins)")
        seen[a.symbol] = a
    return warns


# --------------------------------------------------------------------------
# parsing the tree (cached per source tree)


@dataclass
class _Tree:
    kconf: kconfig_compat.Kconfig
    srctree: Path
    arch: str
    env: dict[str, str]
    lock: threading.Lock
    bases: dict[str, str] = field(default_factory=dict)
    scratch: str = ""
    new_choices: bool = False  # the Linux 6.11+ choice rule (kconfig_compat.Choice611)


_TREES: dict[tuple[str, str], _Tree] = {}
_PARSE_LOCK = threading.Lock()


def load_tree(srctree: Path, arch: str = "x86") -> _Tree:
    """Parse srctree's Kconfig once per process (environment as kbuild sets it)."""
    srctree = Path(srctree).resolve()
    key = (str(srctree), arch)
    with _PARSE_LOCK:
        if key in _TREES:
            return _TREES[key]
        if not (srctree / "Kconfig").is_file():
            raise UsageError(f"{srctree}: no Kconfig at the top (not a kernel source tree?)")
        env = kconfig_compat.kbuild_env(str(srctree), arch)
        # Plays kbuild's object tree for $(shell,...): cc-option writes .tmp_$$ here.
        scratch = tempfile.mkdtemp(prefix="kpt-kconfig-")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        kconfig_compat.SHELL_CWD = scratch
        try:
            kconf = kconfig_compat.Kconfig("Kconfig", warn_to_stderr=False)
        except kconfiglib.KconfigError as exc:
            raise ConfigError(f"{srctree}: kconfiglib cannot parse this tree's Kconfig: "
                              f"{str(exc).strip().splitlines()[0]}",
                              detail=str(exc).strip()) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{srctree}: cannot read Kconfig: {exc}") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        new_choices = kconfig_compat.adapt(kconf, str(srctree))
        # Redefinitions are reported by us with both fragment lines.
        kconf.warn_assign_override = False
        kconf.warn_assign_redun = False
        tree = _TREES[key] = _Tree(kconf, srctree, arch, env, threading.Lock(), scratch=scratch,
                                   new_choices=new_choices)
        return tree


def _header(kconf) -> str:
    # kbuild's header, so our file and olddefconfig's compare line for line.
    return f"#\n# Automatically generated file; DO NOT EDIT.\n# {kconf.mainmenu_text}\n#\n"


def _config_text(tree: _Tree) -> str:
    kconf = tree.kconf
    # The C tools also write a bool symbol that something implies even when its
    # own dependencies are off (symbol.c: `if (sym->implied.tri != no)
    # sym->flags |= SYMBOL_WRITE`); kconfiglib does not. Seen on 6.1's
    # x86_64_defconfig: `# CONFIG_IMA_SECURE_AND_OR_TRUSTED_BOOT is not set`.
    for sym in kconf.unique_defined_syms:
        if sym.orig_type in (BOOL, TRISTATE) and not sym.choice:
            sym.str_value  # noqa: B018 - evaluating sets _write_to_conf
            if not sym._write_to_conf and expr_value(sym.weak_rev_dep):
                sym._write_to_conf = True
    return kconf._config_contents(_header(kconf))


def _load_text(tree: _Tree, text: str, replace: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix="frag-", suffix=".config", dir=tree.scratch)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    try:
        tree.kconf.load_config(tmp, replace=replace)
    finally:
        os.unlink(tmp)
    if tree.new_choices:
        kconfig_compat.invalidate_choices(tree.kconf)


def _allnoconfig(tree: _Tree, allconfig: Path | None) -> str:
    """conf --allnoconfig with KCONFIG_ALLCONFIG: seed values, the rest n."""
    kconf = tree.kconf
    kconf.unset_values()
    # unset_values() leaves kconfiglib's "set by this file" marks of the last
    # load; a merge load over them then reads a user value that is gone
    # (KeyError: None when tinyconfig follows another evaluation).
    for item in (*kconf.unique_defined_syms, *kconf.unique_choices):
        item._was_set = False
    if allconfig is not None and allconfig.is_file():
        kconf.load_config(str(allconfig), replace=False)
    if tree.new_choices:
        kconfig_compat.invalidate_choices(kconf)
    warn = kconf.warn
    kconf.warn = False
    try:
        for sym in kconf.unique_defined_syms:
            if sym.orig_type not in (BOOL, TRISTATE) or sym.user_value is not None:
                continue
            # Linux >= 6.11's conf leaves choice members and prompt-less
            # symbols alone (it walks menus with prompts); older conf sets
            # every bool/tristate symbol.
            if tree.new_choices and (sym.choice is not None or not any(n.prompt for n in sym.nodes)):
                continue
            sym.set_value(2 if sym.is_allnoconfig_y else 0)
    finally:
        kconf.warn = warn
    return _config_text(tree)


def _olddefconfig(tree: _Tree, base_text: str, extra: list[str] = ()) -> str:
    """merge_config.sh -m (later lines win) followed by olddefconfig."""
    _load_text(tree, base_text, replace=True)
    if extra:
        _load_text(tree, "\n".join(extra) + "\n", replace=False)
    return _config_text(tree)


def _base_text(tree: _Tree, base: str) -> str:
    if base in tree.bases:
        return tree.bases[base]
    src = tree.srctree
    srcarch = tree.env["SRCARCH"]
    if base == "allnoconfig":
        text = _allnoconfig(tree, None)
    elif base == "tinyconfig":
        # scripts/kconfig/Makefile (6.1, 6.12): allnoconfig seeded with
        # tiny-base.config, then `make tiny.config` = merge_config.sh -m of
        # kernel/configs/tiny.config and arch/$SRCARCH/configs/tiny.config,
        # then olddefconfig.
        text = _allnoconfig(tree, src / "kernel/configs/tiny-base.config")
        frags = [src / "kernel/configs/tiny.config", src / f"arch/{srcarch}/configs/tiny.config"]
        lines = [a.config_line() for f in frags if f.is_file() for a in parse_fragment(f)]
        text = _olddefconfig(tree, text, lines)
    elif base == "defconfig" or base.endswith("_defconfig") and "/" not in base:
        name = "x86_64_defconfig" if base == "defconfig" and srcarch == "x86" else base
        path = src / "arch" / srcarch / "configs" / name
        if base == "defconfig" and srcarch != "x86":
            path = src / "arch" / srcarch / "configs" / "defconfig"
        if not path.is_file():
            raise UsageError(f"{path}: no such defconfig in {src}")
        text = _olddefconfig(tree, path.read_text())
    else:
        from kpatch_tool.userfile import read_text

        path = Path(base)
        if not path.exists():
            raise UsageError(f"base '{base}': not one of {', '.join(BASES)} and not a file")
        text = _olddefconfig(tree, read_text(path, "base .config"))
    tree.bases[base] = text
    return text


# --------------------------------------------------------------------------
# evaluation and validation


def normalise(text: str) -> list[str]:
    """The assignment lines of a .config, in order (comments and header dropped)."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("CONFIG_") or _UNSET_RE.match(line):
            out.append(line)
    return out


def config_hash(text: str) -> str:
    return hashlib.sha256(("\n".join(normalise(text)) + "\n").encode()).hexdigest()


def evaluate(srctree: Path, base: str, fragments: list[Path], *, arch: str = "x86") -> ConfigResult:
    """Base + fragments evaluated like kbuild; every request checked."""
    assignments = [a for f in fragments for a in parse_fragment(Path(f))]
    tree = load_tree(srctree, arch)
    with tree.lock:
        return _evaluate_locked(tree, base, [Path(f) for f in fragments], assignments)


def _evaluate_locked(tree, base, fragments, assignments) -> ConfigResult:
    kconf = tree.kconf
    warnings = redefinitions(assignments)
    final: dict[str, Assignment] = {}
    for a in assignments:
        final[a.symbol] = a
    problems: list[ConfigProblem] = []
    # Unknown symbols and wrong types are left out of the merge (kbuild would
    # ignore them too); the last line for a symbol is the request checked.
    static = {id(a): _static_problem(kconf, a) for a in assignments}
    lines = [a.config_line() for a in assignments if static[id(a)] is None]
    usable = []
    for a in final.values():
        if static[id(a)] is not None:
            problems.append(static[id(a)])
        else:
            usable.append(a)
    base_text = _base_text(tree, base)
    text = _olddefconfig(tree, base_text, lines)
    failing = [a for a in usable if not _matches(kconf.syms[a.symbol], a)]
    for a in failing:
        problems.append(_explain_problem(kconf, a))
    if failing:
        names = {a.symbol for a in failing}
        _suggest(tree, base_text, lines, failing, [p for p in problems if p.symbol in names])
        # _suggest evaluated with extra symbols: back to this configuration.
        text = _olddefconfig(tree, base_text, lines)
    order = {a.symbol: i for i, a in enumerate(assignments)}
    problems.sort(key=lambda p: order.get(p.symbol, 0))
    return ConfigResult(config_text=text, problems=problems, warnings=warnings,
                        config_hash=config_hash(text), base=base, fragments=list(fragments),
                        srctree=tree.srctree, assignments=assignments)


def _defined_at(sym) -> list[str]:
    return [f"{n.filename}:{n.linenr}" for n in sym.nodes]


def _static_problem(kconf, a: Assignment) -> ConfigProblem | None:
    """Unknown symbols and values of the wrong type: no evaluation needed."""
    sym = kconf.syms.get(a.symbol)
    if sym is None or not sym.nodes:
        names = [s.name for s in kconf.unique_defined_syms]
        close = difflib.get_close_matches(a.symbol, names, n=3, cutoff=0.75)
        hint = f"; did you mean {', '.join('CONFIG_' + c for c in close)}?" if close else ""
        return ConfigProblem(a.symbol, a.value, None,
                             f"unknown symbol: this tree's Kconfig does not define it (typo, or another kernel version){hint}",
                             suggestions=[], fragment=str(a.fragment), line=a.line)
    t = sym.orig_type
    v = a.value
    bad = None
    if t in (BOOL, TRISTATE):
        if a.quoted or v not in TRI:
            bad = "y or n" if t is BOOL else "y, m or n"
        elif t is BOOL and v == "m":
            bad = "y or n (a bool cannot be m)"
    elif t is INT:
        if a.quoted or not _INT_RE.match(v):
            bad = "a decimal number" if not (v == "n" and not a.quoted) else None
    elif t is HEX:
        if a.quoted or not _HEX_RE.match(v):
            bad = "a hex number (0x...)" if not (v == "n" and not a.quoted) else None
    elif t is STRING:
        if not a.quoted and v != "n":
            bad = 'a quoted string ("...")'
    if bad:
        return ConfigProblem(a.symbol, v if not a.quoted else f'"{v}"', sym.str_value,
                             f"wrong type: {a.symbol} is {TYPE_TO_STR[t]}, the value must be {bad}",
                             defined_at=_defined_at(sym), fragment=str(a.fragment), line=a.line)
    return None


def _matches(sym, a: Assignment) -> bool:
    t = sym.orig_type
    actual = sym.str_value
    if t in (BOOL, TRISTATE):
        return actual == a.value
    if a.value == "n" and not a.quoted:
        # `# CONFIG_FOO is not set` on a non-bool: kbuild ignores it, so do we.
        return True
    if t is INT:
        return actual != "" and int(actual) == int(a.value)
    if t is HEX:
        return actual != "" and int(actual, 16) == int(a.value, 16)
    return actual == a.value


def value_expr(expr) -> str:
    """expr_str with each symbol's current value: `XEN [=y] && ACPI [=n]`."""
    def fn(sc):
        if sc.__class__ is kconfiglib.Symbol and not sc.is_constant:
            # A symbol this arch does not define (S390 on x86) is n.
            return f"{sc.name} [={sc.str_value if sc.nodes else 'n'}]"
        if sc.__class__ is kconfiglib.Choice:
            # A choice member depends on its choice; kconfiglib would print a bare <choice>.
            return f"{choice_name(sc)} [={TRI_TO_STR(sc.tri_value)}]"
        return kconfiglib.standard_sc_expr_str(sc)
    return expr_str(expr, fn)


def choice_name(choice) -> str:
    """Most choices are anonymous: their prompt and place are what a user can find."""
    prompt = next((n.prompt[0] for n in choice.nodes if n.prompt), None)
    label = f'choice "{prompt}"' if prompt else f"choice {choice.name or ''}".rstrip()
    where = f"{choice.nodes[0].filename}:{choice.nodes[0].linenr}" if choice.nodes else ""
    return f"<{label}{' at ' + where if where else ''}>"


def _choice_state(choice) -> str:
    sel = choice.selection
    if choice.tri_value == 0:
        return f"{choice_name(choice)} is off (depends on {value_expr(choice.direct_dep)}), so none of its members is y"
    return f"{choice_name(choice)} selected {sel.name if sel else 'no member'}"


def selectors(kconf, sym, weak: bool = False) -> list[str]:
    out = []
    expr = sym.weak_rev_dep if weak else sym.rev_dep
    if expr is kconf.n:
        return out
    for term in split_expr(expr, kconfiglib.OR):
        s = term[1] if isinstance(term, tuple) and term[0] is kconfiglib.AND else term
        # Selects add `if cond` as AND(selector, cond); the selector is the leftmost symbol.
        while isinstance(s, tuple):
            s = s[1]
        if s.__class__ is kconfiglib.Symbol and not s.is_constant:
            out.append(s.name)
    return list(dict.fromkeys(out))


def _explain_problem(kconf, a: Assignment) -> ConfigProblem:
    sym = kconf.syms[a.symbol]
    actual = sym.str_value
    p = ConfigProblem(a.symbol, a.value if not a.quoted else f'"{a.value}"', actual, "",
                      defined_at=_defined_at(sym), fragment=str(a.fragment), line=a.line)
    want = TRI.get(a.value, 2)
    has_prompt = any(n.prompt for n in sym.nodes)
    dep = expr_value(sym.direct_dep)
    if sym.orig_type is TRISTATE and a.value == "m" and kconf.modules.tri_value == 0:
        # Without modules an m request is promoted to y (or stays n).
        p.reason = "m needs CONFIG_MODULES=y"
        p.unmet_expr = value_expr(kconf.modules)
    elif sym.orig_type in (BOOL, TRISTATE) and want < expr_value(sym.rev_dep):
        p.reason = f"forced to {actual} by select: selected by {', '.join(selectors(kconf, sym))}"
        p.unmet_expr = value_expr(sym.rev_dep)
    elif not has_prompt:
        sel = selectors(kconf, sym)
        p.reason = "no prompt; " + (f"selected by {', '.join(sel)}" if sel else "its value comes only from its defaults")
        if dep < want:
            p.unmet_expr = value_expr(sym.direct_dep)
    elif sym.choice is not None and expr_value(sym.choice.direct_dep) < want:
        p.reason = f"in a choice: {_choice_state(sym.choice)}"
        p.unmet_expr = value_expr(sym.choice.direct_dep)
    elif dep < want and sym.choice is not None:
        p.reason = f"unmet dependency (a member of {choice_name(sym.choice)}, which selected " \
                   f"{sym.choice.selection.name if sym.choice.selection else 'no member'})"
        p.unmet_expr = value_expr(sym.direct_dep)
    elif dep < want:
        p.reason = "unmet dependency" if dep == 0 else "dependencies limit it to m"
        p.unmet_expr = value_expr(sym.direct_dep)
    elif sym.visibility < want:
        conds = [value_expr(n.prompt[1]) for n in sym.nodes if n.prompt and n.prompt[1] is not kconf.y]
        if sym.choice is not None:
            p.reason = f"in a choice: {_choice_state(sym.choice)}; the choice is not visible or in m mode"
        else:
            p.reason = "prompt not visible"
            p.unmet_expr = " || ".join(conds) or None
    elif sym.choice is not None and sym.choice.selection is not sym:
        p.reason = f"in a choice: {_choice_state(sym.choice)} (set {a.symbol}=y as the only y of the choice)"
    elif sym.choice is not None and want == 0 and sym.choice.selection is sym:
        p.reason = f"in a choice: {_choice_state(sym.choice)} (a choice that is on has one member y: " \
                   f"set another member to y instead)"
    elif sym.orig_type in (INT, HEX) and sym.ranges:
        rng = [f"{value_expr(lo)}..{value_expr(hi)}" + (f" if {value_expr(c)}" if c is not kconf.y else "")
               for lo, hi, c in sym.ranges]
        p.reason = f"out of range: {', '.join(rng)}"
    else:
        p.reason = "the value did not take (set again by a later line, or overridden by kconfig)"
    return p


# --------------------------------------------------------------------------
# suggestions: which symbols to add so that the requests hold


def _needs(kconf, expr, want: int, depth: int = 0) -> set[str] | None:
    """Symbols to set to y so that expr >= want; None if we cannot tell."""
    if depth > 30:
        return None
    if expr_value(expr) >= want:
        return set()
    if expr.__class__ is kconfiglib.Symbol:
        if expr.is_constant:
            return None
        return {expr.name}
    if expr.__class__ is kconfiglib.Choice:
        # A choice is on when its own dependencies are: ask for those.
        return _needs(kconf, expr.direct_dep, want, depth + 1)
    if not isinstance(expr, tuple):
        return None
    op = expr[0]
    if op is kconfiglib.AND:
        a = _needs(kconf, expr[1], want, depth + 1)
        b = _needs(kconf, expr[2], want, depth + 1)
        return None if a is None or b is None else a | b
    if op is kconfiglib.OR:
        options = [o for o in (_needs(kconf, expr[1], want, depth + 1), _needs(kconf, expr[2], want, depth + 1))
                   if o is not None]
        return min(options, key=len) if options else None
    if op is kconfiglib.EQUAL and expr[2].__class__ is kconfiglib.Symbol and expr[2].is_constant \
            and expr[2].name in ("y", "m") and expr[1].__class__ is kconfiglib.Symbol and not expr[1].is_constant:
        return {expr[1].name}
    # NOT, comparisons with other symbols: no safe suggestion.
    return None


def _wanted(kconf, name: str) -> set[str] | None:
    """For a symbol that must become y: itself if it has a prompt, else a selector."""
    sym = kconf.syms.get(name)
    if sym is None or not sym.nodes:
        return None
    if any(n.prompt for n in sym.nodes):
        return {name}
    sels = [s for s in selectors(kconf, sym) if any(n.prompt for n in kconf.syms[s].nodes)]
    if sels:
        # Prefer a selector from the symbol's own Kconfig folder (VIRTIO_MMIO
        # for VIRTIO, not REMOTEPROC), then the one needing fewest others.
        home = os.path.dirname(sym.nodes[0].filename)

        def cost(s):
            other = kconf.syms[s]
            return (os.path.dirname(other.nodes[0].filename) != home,
                    len(_needs(kconf, other.direct_dep, 2) or ()), s)
        return {min(sels, key=cost)}
    return None


def _suggest(tree: _Tree, base_text: str, lines: list[str], assignments: list[Assignment],
             problems: list[ConfigProblem]) -> None:
    """Fill problem.suggestions by adding symbols and re-evaluating until all hold."""
    kconf = tree.kconf
    requested = {p.symbol: p for p in problems}
    per: dict[str, list[str]] = {s: [] for s in requested}
    added: dict[str, str] = {}
    for _round in range(8):
        progress = False
        for name in requested:
            sym = kconf.syms[name]
            a = next(x for x in reversed(assignments) if x.symbol == name)
            if _matches(sym, a):
                continue
            want = TRI.get(a.value, 2)
            if want == 0:
                continue  # forced on by a select: the fix is to drop the selector
            has_prompt = any(n.prompt for n in sym.nodes)
            need = set()
            if not has_prompt:
                w = _wanted(kconf, name)
                if w and w != {name}:
                    need |= w
            deps = _needs(kconf, sym.direct_dep, want)
            if deps:
                need |= deps
            for n in sym.nodes:
                if n.prompt and expr_value(n.prompt[1]) < want:
                    need |= _needs(kconf, n.prompt[1], want) or set()
            if want == 1 and kconf.modules.tri_value == 0:
                need.add("MODULES")
            # Expand promptless needs into their selectors, and pull in the
            # dependencies of everything we add.
            todo = list(need)
            while todo:
                s = todo.pop()
                if s in added or s in requested:
                    continue
                w = _wanted(kconf, s)
                if not w:
                    continue
                for x in w:
                    if x in added:
                        continue
                    added[x] = "y"
                    per[name].append(x)
                    progress = True
                    xs = kconf.syms[x]
                    todo.extend(_needs(kconf, xs.direct_dep, 2) or ())
        if not progress:
            break
        _olddefconfig(tree, base_text, lines + [f"CONFIG_{s}=y" for s in added])
    for name, p in requested.items():
        sym = kconf.syms[name]
        a = next(x for x in reversed(assignments) if x.symbol == name)
        if per[name] and _matches(sym, a):
            p.suggestions = [f"CONFIG_{s}=y" for s in per[name]]
        elif per[name]:
            p.suggestions = [f"CONFIG_{s}=y" for s in per[name]]
            p.reason += " (adding the symbols below was not enough; check the dependency by hand)"


# --------------------------------------------------------------------------
# writing, profiles, cross-check


def write_config(result: ConfigResult, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safefs.replace_file(path, result.config_text.encode())
    return path


def load_profiles(ws) -> dict:
    path = ws.configs_dir / "profiles.toml"
    try:
        return tomllib.loads(path.read_text()).get("profiles", {})
    except FileNotFoundError:
        raise UsageError(f"{path}: no profiles file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None


def series_fragments(ws, series: str) -> list[Path]:
    """The `fragments = [...]` of the series and of every series it depends on (deepest
    first, each once): a series builds on its dependencies' patches, so it needs their
    configuration too."""
    out: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        from kpatch_tool.series import load_series

        s = load_series(ws, name)
        for dep in s.depends:
            visit(dep)
        out.extend(s.fragments)

    visit(series)
    return out


def profile_fragments(ws, profile: str, series=()) -> tuple[str, list[Path]]:
    profiles = load_profiles(ws)
    if profile not in profiles:
        close = difflib.get_close_matches(profile, list(profiles), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UsageError(f"unknown config profile '{profile}'{hint}; "
                         f"{ws.configs_dir / 'profiles.toml'} has: {', '.join(sorted(profiles))}")
    prof = profiles[profile]
    base = prof.get("base", "tinyconfig")
    if base not in BASES and not base.endswith("_defconfig"):
        base = str(ws.configs_dir / base)
    frags = [ws.configs_dir / f for f in prof.get("fragments", [])]
    for s in series or ():
        frags += [f for f in series_fragments(ws, s) if f not in frags]
    return base, frags


def _objdir(srctree: Path, arch: str) -> Path:
    """A kept O= folder per source tree, so scripts/kconfig/conf is built once."""
    from kpatch_tool.workspace import default_cache_dir

    key = hashlib.sha256(f"{Path(srctree).resolve()}:{arch}".encode()).hexdigest()[:16]
    d = default_cache_dir() / "kconfig-check" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def kbuild_config(srctree: Path, target: str, config_text: str | None = None, *, arch: str = "x86",
                  extra_env: dict | None = None, log=None) -> str:
    """Run the kernel's own `make <config target>` and return the .config it wrote.

    Runs in a kept O= folder per tree (scripts/kconfig/conf is built once),
    locked so checks never mix; config_text, when given, is the .config the
    target starts from. The source tree is never written to.
    """
    import fcntl

    srctree = Path(srctree).resolve()
    obj = _objdir(srctree, arch)
    with open(obj / ".kpt-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in (".config", ".config.old"):
            (obj / stale).unlink(missing_ok=True)
        if config_text is not None:
            (obj / ".config").write_text(config_text)
        env = {**os.environ, **(extra_env or {})}
        res = proc.run(["make", "-s", "-C", str(srctree), f"O={obj}", f"ARCH={arch}", target],
                       env=env, timeout=300, log=log)
        if not res.ok:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-10:])
            raise ConfigError(f"`make {target}` failed for {srctree}", detail=tail)
        return (obj / ".config").read_text()


def cross_check(srctree: Path, config_path: Path, log=None, *, arch: str = "x86") -> list[str]:
    """Diff lines between config_path and `make olddefconfig` of it ([] = fixed point)."""
    config_path = Path(config_path)
    ours = config_path.read_text()
    theirs = kbuild_config(srctree, "olddefconfig", ours, arch=arch, log=log)
    return list(difflib.unified_diff(normalise(ours), normalise(theirs),
                                     fromfile=f"{config_path} (kpt)", tofile="make olddefconfig",
                                     lineterm="", n=1))


def config_for_profile(ws, srctree: Path, profile: str, extra_fragments=(), series=(), *,
                       output: Path | None = None, check: bool = False, log=None) -> ConfigResult:
    """Evaluate a profile; write output (even on failure); ConfigError on problems."""
    base, frags = profile_fragments(ws, profile, series)
    frags += [Path(f) for f in extra_fragments]
    result = evaluate(srctree, base, frags)
    if output is not None:
        write_config(result, output)
    if result.problems:
        raise ConfigError(f"profile '{profile}': {len(result.problems)} requested value(s) not in the .config"
                          + (f" (written to {output})" if output else ""), detail=result.report())
    if check and output is not None:
        diff = cross_check(srctree, output, log)
        if diff:
            raise ConfigError(f"profile '{profile}': {output} is not a fixed point of `make olddefconfig` "
                              "(kpt's evaluation differs from kbuild's)", detail="\n".join(diff))
    return result


# --------------------------------------------------------------------------
# explain and diff


@dataclass
class SymbolInfo:
    name: str
    type: str
    prompts: list[str]
    defined_at: list[str]
    depends_on: str
    selected_by: list[str]  # "X [=y]" (with the select's condition when it has one)
    implied_by: list[str]
    selects: list[str]
    implies: list[str]
    defaults: list[str]
    value: str
    why: str
    under: str  # which configuration the values are from

    def render(self) -> str:
        rows = [
            ("symbol", f"CONFIG_{self.name} ({self.type})"),
            ("prompt", "; ".join(self.prompts) or "(none: cannot be set directly)"),
            ("defined at", ", ".join(self.defined_at)),
            ("depends on", self.depends_on),
            ("selected by", ", ".join(self.selected_by) or "-"),
            ("implied by", ", ".join(self.implied_by) or "-"),
            ("selects", ", ".join(self.selects) or "-"),
            ("implies", ", ".join(self.implies) or "-"),
            ("defaults", "; ".join(self.defaults) or "-"),
            ("value", f"{self.value}   (under {self.under})"),
            ("why", self.why),
        ]
        return "\n".join(f"{k:>12}: {v}" for k, v in rows)


def _rev_terms(kconf, expr) -> list[str]:
    if expr is kconf.n:
        return []
    return [value_expr(t) for t in split_expr(expr, kconfiglib.OR)]


def explain(srctree: Path, symbol: str, base: str = "defconfig", fragments=(), *, arch: str = "x86",
            under: str | None = None) -> SymbolInfo:
    """Everything that decides one symbol's value, under base + fragments."""
    name = symbol.removeprefix("CONFIG_")
    assignments = [a for f in fragments for a in parse_fragment(Path(f))]
    tree = load_tree(srctree, arch)
    with tree.lock:
        kconf = tree.kconf
        sym = kconf.syms.get(name)
        if sym is None or not sym.nodes:
            close = difflib.get_close_matches(name, [s.name for s in kconf.unique_defined_syms], n=3, cutoff=0.75)
            raise UsageError(f"CONFIG_{name}: not defined in {tree.srctree}"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))
        lines = [a.config_line() for a in assignments if _static_problem(kconf, a) is None]
        base_text = _base_text(tree, base)
        _olddefconfig(tree, base_text, lines)
        prompts = [f'"{n.prompt[0]}"' + (f" if {value_expr(n.prompt[1])}" if n.prompt[1] is not kconf.y else "")
                   for n in sym.nodes if n.prompt]
        selects = [kconfiglib.standard_sc_expr_str(t) + (f" if {value_expr(c)}" if c is not kconf.y else "")
                   for t, c in sym.orig_selects]
        implies = [kconfiglib.standard_sc_expr_str(t) + (f" if {value_expr(c)}" if c is not kconf.y else "")
                   for t, c in sym.orig_implies]
        defaults = [value_expr(d) + (f" if {value_expr(c)}" if c is not kconf.y else "")
                    for d, c in sym.orig_defaults]
        value = sym.str_value
        why = _why(kconf, sym, assignments, base)
        return SymbolInfo(name, TYPE_TO_STR[sym.orig_type], prompts, _defined_at(sym),
                          value_expr(sym.direct_dep), _rev_terms(kconf, sym.rev_dep),
                          _rev_terms(kconf, sym.weak_rev_dep), selects, implies, defaults,
                          value, why, under or base)


def _why(kconf, sym, assignments, base) -> str:
    req = next((a for a in reversed(assignments) if a.symbol == sym.name), None)
    src = f"{req.where}" if req else None
    tri = sym.orig_type in (BOOL, TRISTATE)
    if tri and expr_value(sym.rev_dep) and sym.tri_value == expr_value(sym.rev_dep) and \
            not (sym.visibility and sym.user_value is not None and sym.user_value >= sym.tri_value):
        return f"selected by {', '.join(selectors(kconf, sym))}"
    if sym.visibility and sym.user_value is not None:
        return f"set to {sym.user_value if not tri else TRI_TO_STR(sym.user_value)} by " + (src or f"the base ({base})")
    if not expr_value(sym.direct_dep):
        return f"dependencies not met ({value_expr(sym.direct_dep)}), so {sym.str_value or '(empty)'}"
    if not any(n.prompt for n in sym.nodes):
        lead = "no prompt"
    elif not sym.visibility:
        conds = [value_expr(n.prompt[1]) for n in sym.nodes if n.prompt]
        lead = f"prompt hidden ({' || '.join(conds)})"
    else:
        lead = "visible but not set by the base or a fragment"
    for d, c in sym.defaults:
        if expr_value(c):
            return f"{lead}; default {value_expr(d)}" + (f" (its condition {value_expr(c)} holds)" if c is not kconf.y else "")
    if tri and expr_value(sym.weak_rev_dep) and expr_value(sym.direct_dep):
        return f"{lead}; implied by {', '.join(selectors(kconf, sym, weak=True))}"
    return f"{lead}; no default applies, so {sym.str_value or '(empty)'}"


def TRI_TO_STR(v: int) -> str:
    return kconfiglib.TRI_TO_STR[v]


def read_values(text: str) -> dict[str, str]:
    """Symbol -> value of a .config (`is not set` as n), strings kept quoted."""
    out = {}
    for line in text.splitlines():
        line = line.rstrip()
        m = _UNSET_RE.match(line)
        if m:
            out[m.group(1)] = "n"
            continue
        m = _SET_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def diff_configs(a_text: str, b_text: str) -> list[tuple[str, str | None, str | None]]:
    """(symbol, value in A, value in B) for every symbol that differs; None = absent."""
    a, b = read_values(a_text), read_values(b_text)
    names = list(dict.fromkeys([*a, *b]))
    return [(n, a.get(n), b.get(n)) for n in names if a.get(n) != b.get(n)]
