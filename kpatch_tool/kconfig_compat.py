"""The smallest layer that lets kconfiglib 14.1.0 read Linux 6.x Kconfig files.

kconfiglib's last release (2020) predates two changes in the kernel's Kconfig
language that matter here. Both are handled in this module, in our code; the
installed kconfiglib stays unmodified.

1. The bare ``modules`` property (Linux >= 5.13, ``kernel/module/Kconfig``
   in 6.1: ``menuconfig MODULES ... modules``) replaced ``option modules``.
   kconfiglib already assumes that the symbol named MODULES is the modules
   switch (``Kconfig.modules``), so the keyword carries no information for it:
   :class:`Kconfig` accepts it as a no-op property and keeps parsing the rest
   of the entry's properties. This was the only construct of 6.1 and 6.12 that
   failed (both parse completely with it).

2. ``$(shell,...)`` runs in the caller's working directory in kconfiglib.
   Kbuild runs ``conf`` in the object tree, and the compiler-feature macros of
   ``scripts/Kconfig.include`` rely on that: ``cc-option`` does
   ``mkdir .tmp_$$`` in the current directory, so in a read-only or unrelated
   cwd every ``cc-option`` silently evaluates to n. :func:`shell_fn` (loaded by
   kconfiglib's documented ``KCONFIG_FUNCTIONS`` hook) runs the command with
   ``/bin/sh -c`` in a private scratch directory that plays the object tree, with
   the environment kbuild exports (:func:`kbuild_env`).

3. Linux 6.11 reworked how a choice picks its member (symbol.c,
   ``sym_calc_choice``): a default member the user explicitly set to n is
   skipped, then the first visible member without a user value is taken.
   kconfiglib keeps the old rule (the default wins even when set to n), which
   made 6.12's x86_64_defconfig (``# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set``)
   come out differently from ``make``. :func:`adapt` switches the choices of a
   tree whose scripts/kconfig has the new rule to :class:`Choice611`.

4. Linux 6.18 added the bare ``transitional`` property (arch/Kconfig's
   ``CFI_CLANG`` in 7.2): a promptless old name, read by olddefconfig and
   never written. :class:`Kconfig` parses it and records the symbols.

5. Linux 7.0 added ``depends on X if Y``: X || (Y = n), built the way
   menu.c's menu_add_dep() does.

6. Newer kconfig starts an int symbol at "0" and a hex one at "0x0" (symbol.c,
   sym_calc_value) where kconfiglib starts at "". A promptless int without a
   default then compares equal to 0: 7.2's ``PAGE_BLOCK_MAX_ORDER`` takes
   ``default 10 if ARCH_FORCE_MAX_ORDER = 0`` on x86, and kconfiglib gave 1.
   :func:`adapt` turns the rule on for such trees (``Kconfig.int_zero``).

Everything else (environment, base configs) is kbuild's behaviour reproduced in
kconfig.py, checked against ``make olddefconfig`` by ``kconfig.cross_check``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import kconfiglib

# kconfiglib's token for a bare `modules` line (its keyword table already has
# it, for `option modules`).
_T_MODULES = kconfiglib._T_MODULES

# Where $(shell,...) runs: set per parse by kconfig._parse (one parse at a time
# per process; the module-level lock there serialises them).
SHELL_CWD: str | None = None


# A token of our own for a bare `transitional` line (Linux >= 6.18), which
# kconfiglib's tokenizer would take for a macro expansion.
_T_TRANSITIONAL = object()


class Kconfig(kconfiglib.Kconfig):
    """kconfiglib.Kconfig that also accepts the bare `modules` and `transitional` properties."""

    def __init__(self, *args, **kwargs):
        # Symbols declared `transitional`: a promptless pass-through of an old
        # name, never written to a new .config (kconfiglib does not write a
        # promptless symbol without defaults either); kconfig.py refuses them
        # in fragments, naming the symbol.
        self.transitional: set[str] = set()
        self.int_zero = False
        super().__init__(*args, **kwargs)

    def _tokenize(self, s):
        if s.strip() == "transitional":
            self._line = s
            return (_T_TRANSITIONAL, None)
        return super()._tokenize(s)

    def _expect_expr_and_eol(self):
        # `depends on X if Y` (Linux 7.0): X only applies when Y is not n,
        # i.e. X || (Y = n), as scripts/kconfig/menu.c:menu_add_dep builds it.
        expr = self._parse_expr(True)
        if self._tokens[0] is kconfiglib._T_DEPENDS and self._check_token(kconfiglib._T_IF):
            expr = self._make_or(expr, self._equals_n(self._parse_expr(True)))
        if self._tokens[self._tokens_i] is not None:
            self._trailing_tokens_error()
        return expr

    def _equals_n(self, e, value=None):
        """The expression `e = value` (n by default) in kconfiglib's tuples, as
        expr_trans_compare() rewrites it: comparisons only take symbols."""
        value = value or self.n
        if not isinstance(e, tuple):
            return (kconfiglib.EQUAL, e, value)
        op = e[0]
        if op is kconfiglib.NOT:
            return self._equals_n(e[1], self.y if value is self.n else self.n)
        if op in (kconfiglib.AND, kconfiglib.OR):
            # (A || B) = n is (A = n) && (B = n); (A && B) = y likewise.
            conj = (op is kconfiglib.OR) == (value is self.n)
            a, b = self._equals_n(e[1], value), self._equals_n(e[2], value)
            return (kconfiglib.AND, a, b) if conj else (kconfiglib.OR, a, b)
        # A comparison is n or y, never m.
        return e if value is self.y else (kconfiglib.NOT, e)

    def _parse_props(self, node):
        # The base parser stops at the first line that is not a property and
        # leaves it for the block parser (`_reuse_tokens`), which rejects a
        # bare `modules`. Consume it here and continue with the properties that
        # follow it. The base method restarts node.dep at y, so keep the
        # `depends on` seen before the keyword.
        super()._parse_props(node)
        while (self._reuse_tokens and self._tokens[0] in (_T_MODULES, _T_TRANSITIONAL)
               and self._tokens[1] is None):
            if self._tokens[0] is _T_TRANSITIONAL:
                self.transitional.add(getattr(node.item, "name", ""))
            elif node.item is not self.modules:
                self._warn(f"'modules' on {getattr(node.item, 'name', node.item)}: "
                           "only MODULES is treated as the modules switch",
                           self.filename, self.linenr)
            self._reuse_tokens = False
            dep = node.dep
            super()._parse_props(node)
            node.dep = self._make_and(dep, node.dep)


class Choice611(kconfiglib.Choice):
    """A choice that picks its member the way Linux >= 6.11's kconfig does."""

    __slots__ = ()

    def _selection(self):
        if self.tri_value != 2:
            return None
        # 1. A visible member the user set to y (kconfiglib keeps the last one).
        us = self.user_selection
        if us is not None and us.visibility and us.user_value == 2:
            return us
        # 2. The default, unless the user explicitly set it to n.
        default = self._selection_from_defaults()
        if default is not None and default.user_value != 0:
            return default
        # 3. The first visible member the user said nothing about.
        for sym in self.syms:
            if sym.visibility and sym.user_value is None:
                return sym
        # 4. Every visible member is n: the least recently set one (the last).
        for sym in reversed(self.syms):
            if sym.visibility:
                return sym
        return None


# kconfiglib tests `sym.__class__ is Symbol` throughout, so the rule cannot
# live in a subclass: the property is wrapped once and asks the symbol's
# Kconfig whether its tree has the rule (our Kconfig's `int_zero`).
_plain_str_value = kconfiglib.Symbol.str_value


def _str_value(sym):
    val = _plain_str_value.fget(sym)
    if val == "" and sym.orig_type in (kconfiglib.INT, kconfiglib.HEX) and getattr(sym.kconfig, "int_zero", False):
        val = sym._cached_str_val = "0" if sym.orig_type == kconfiglib.INT else "0x0"
    return val


kconfiglib.Symbol.str_value = property(_str_value, doc=_plain_str_value.__doc__)


def _symbol_c(srctree: str) -> str:
    try:
        with open(os.path.join(srctree, "scripts/kconfig/symbol.c"), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def new_choice_rule(srctree: str) -> bool:
    """Does this tree's kconfig use the 6.11+ choice rule (choice_members list)?"""
    return "choice_members" in _symbol_c(srctree)


def adapt(kconf, srctree: str) -> bool:
    """Bring kconf to srctree's kconfig rules; True when the 6.11+ choice rule applies."""
    symbol_c = _symbol_c(srctree)
    kconf.int_zero = 'newval.val = "0";' in symbol_c
    if kconf.int_zero:
        for sym in kconf.unique_defined_syms:
            sym._rec_invalidate()
    if "choice_members" not in symbol_c:
        return False
    for choice in kconf.choices:
        # Same slots, so the class of the existing object can change in place.
        choice.__class__ = Choice611
    return True


def invalidate_choices(kconf) -> None:
    """Setting a choice member to n does not invalidate its choice in kconfiglib;
    under the 6.11+ rule that n changes the selection, so drop the caches."""
    for choice in kconf.unique_choices:
        choice._rec_invalidate()


def shell_fn(kconf, _name, command):
    """$(shell,command) as kbuild evaluates it: sh -c, in the object tree."""
    res = subprocess.run(["/bin/sh", "-c", command], cwd=SHELL_CWD or tempfile.gettempdir(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    out = res.stdout.decode("utf-8", "replace")
    err = res.stderr.decode("utf-8", "replace")
    if err:
        kconf._warn(f"'{command}' wrote to stderr: {' '.join(err.splitlines())}",
                    kconf.filename, kconf.linenr)
    # Same normalisation as kbuild's preprocessor: newlines become spaces,
    # trailing ones dropped.
    return "\n".join(out.splitlines()).rstrip("\n").replace("\n", " ")


# kconfiglib imports the module named by $KCONFIG_FUNCTIONS and merges its
# `functions` dict over the built-ins (name: (function, min args, max args)).
functions = {"shell": (shell_fn, 1, 1)}
FUNCTIONS_MODULE = __name__


def kbuild_env(srctree: str, arch: str = "x86") -> dict[str, str]:
    """The variables the top-level Makefile exports to conf (its defaults).

    Kconfig files reference them through $(VAR): CC/LD/OBJCOPY feed feature
    tests (X86_X32_ABI depends on $(OBJCOPY)), CC_VERSION_TEXT becomes a
    symbol value, PAHOLE/RUSTC/BINDGEN give version symbols.
    """
    srcarch = {"x86_64": "x86", "i386": "x86", "x86": "x86"}.get(arch, arch)
    env = {
        "srctree": srctree,
        "ARCH": arch,
        "SRCARCH": srcarch,
        "CC": "gcc",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "LD": "ld",
        "AR": "ar",
        "NM": "nm",
        "STRIP": "strip",
        "OBJCOPY": "objcopy",
        "OBJDUMP": "objdump",
        "READELF": "readelf",
        "PAHOLE": "pahole",
        "RESOLVE_BTFIDS": "",
        "LEX": "flex",
        "YACC": "bison",
        "AWK": "awk",
        "PERL": "perl",
        "PYTHON3": "python3",
        "RUSTC": "rustc",
        "RUSTDOC": "rustdoc",
        "RUSTFMT": "rustfmt",
        "BINDGEN": "bindgen",
        "CARGO": "cargo",
        "HOSTRUSTC": "rustc",
        "HOSTPKG_CONFIG": "pkg-config",
        "CONFIG_SHELL": "sh",
        "KERNELVERSION": kernelversion(srctree),
        "CC_VERSION_TEXT": cc_version_text("gcc"),
        "KCONFIG_FUNCTIONS": FUNCTIONS_MODULE,
    }
    # Linux >= 6.19's Makefile exports the pahole version (init/Kconfig reads $(PAHOLE_VERSION)).
    script = os.path.join(srctree, "scripts", "pahole-version.sh")
    if os.path.isfile(script):
        env["PAHOLE_VERSION"] = _first_line(["sh", script, "pahole"]) or "0"
    return env


def _first_line(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return (res.stdout.splitlines() or [""])[0].strip()


def kernelversion(srctree: str) -> str:
    """`make -s kernelversion`, read from the top-level Makefile."""
    fields = {}
    try:
        with open(os.path.join(srctree, "Makefile"), encoding="utf-8", errors="replace") as fh:
            for _ in range(20):
                line = fh.readline()
                key, sep, val = line.partition("=")
                if sep and key.strip() in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
                    fields[key.strip()] = val.strip()
    except OSError:
        return ""
    ver = f"{fields.get('VERSION', '0')}.{fields.get('PATCHLEVEL', '0')}"
    # The Makefile's rule: SUBLEVEL is shown only when non-empty.
    if fields.get("SUBLEVEL"):
        ver += f".{fields['SUBLEVEL']}"
    return ver + fields.get("EXTRAVERSION", "")


_CC_TEXT: dict[str, str] = {}


def cc_version_text(cc: str) -> str:
    """Kbuild's CC_VERSION_TEXT: first line of `LC_ALL=C $(CC) --version`, '#' removed."""
    if cc not in _CC_TEXT:
        try:
            out = subprocess.run([cc, "--version"], env={**os.environ, "LC_ALL": "C"},
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _CC_TEXT[cc] = (out.splitlines() or [""])[0].replace("#", "")
    return _CC_TEXT[cc]
