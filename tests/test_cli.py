"""No traceback, ever: every command over a generated corpus of malformed inputs.

Each case is a workspace (or an input file) broken one way: wrong TOML types,
binary and truncated files, folders and FIFOs where files are expected, rich
markup and control characters in data, huge numbers. Every command that reads
it must end with an exit code of the README's table (0-7) and a message, never
a Python traceback or a hang; user data is printed as written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpatch_tool.cli import main


MARKUP = "[/b] [bold]x[/bold] :x: [link=file:///etc]y[/link]"
CONTROL = "a\x1b[31mred\x07\x00b"
HUGE = "99999999999999999999999999999"

KCONFIG = 'config A\n\tbool "a"\n\nconfig N\n\tint "n"\n\tdefault 1\n'

GOOD_TOML = 'name = "good"\nversion = 1\nsummary = "good"\ndepends = []\n[trees.linux]\nbase = "main"\n'

# ---------------------------------------------------------------- the corpus

TOML_VALUES = {  # kpt.toml: each replaces the workspace file
    "source-int": '[trees.linux]\nsource = 5\n',
    "trees-str": 'trees = "x"\n',
    "cache-int": 'cache_dir = 5\n',
    "source-dash": '[trees.linux]\nsource = "--upload-pack=touch /tmp/kpt-pwned"\n',
    "debian-dash": '[trees.linux]\nsource = "debian:-o"\n',
    "tree-table-str": '[trees]\nlinux = "x"\n',
    "source-markup": f'[trees.linux]\nsource = "{MARKUP}"\n',
    "truncated": '[trees.linux\nsource = "',
    "binary": b"\x00\xff\xfe\x80kpt\x00",
    "huge": f'cache_dir = "x"\n[trees.linux]\nsource = "/nonexistent"\nversion = {HUGE}\n',
    "version-int": '[trees.linux]\nsource = "/nonexistent"\nversion = 5\n',
    "ci-int": 'ci = 5\n[trees.linux]\nsource = "/nonexistent"\n',
    "ci-series-int": '[ci]\nseries = 5\nmode = 7\n[trees.linux]\nsource = "/nonexistent"\n',
}

SERIES_TOML = {  # patches/good/series.toml
    "version-str": GOOD_TOML.replace("version = 1", 'version = "six"'),
    "version-huge": GOOD_TOML.replace("version = 1", f"version = {HUGE[:18]}"),
    "version-float": GOOD_TOML.replace("version = 1", "version = nan"),
    "depends-str": GOOD_TOML.replace("depends = []", 'depends = "x"'),
    "depends-int": GOOD_TOML.replace("depends = []", "depends = [5]"),
    "depends-self": GOOD_TOML.replace("depends = []", 'depends = ["good"]'),
    "depends-markup": GOOD_TOML.replace("depends = []", f'depends = ["{MARKUP}"]'),
    "trees-int": 'name = "good"\ntrees = 5\n',
    "tree-str": 'name = "good"\n[trees]\nlinux = "x"\n',
    "base-int": GOOD_TOML.replace('base = "main"', "base = 5"),
    "base-dash": GOOD_TOML.replace('base = "main"', 'base = "--output=/tmp/x"'),
    "summary-markup": GOOD_TOML.replace('summary = "good"', f'summary = "{MARKUP}"'),
    "summary-control": GOOD_TOML.replace('summary = "good"', 'summary = "a\\u001b[31mb\\u0007"'),
    "summary-list": GOOD_TOML.replace('summary = "good"', "summary = [1]"),
    "smoke-int": "smoke = 5\n" + GOOD_TOML,
    "smoke-name-int": GOOD_TOML + "[[smoke]]\nname = 5\nrun = 'true'\nwhere = 'guest'\n",
    "smoke-nan": GOOD_TOML + "[[smoke]]\nname = 'x'\nrun = 'true'\nwhere = 'guest'\ntimeout = nan\n",
    "smoke-huge": GOOD_TOML + f"[[smoke]]\nname = 'x'\nrun = 'true'\nwhere = 'guest'\ntimeout = {HUGE[:18]}\n",
    "smoke-regex": GOOD_TOML + "[[smoke]]\nname = 'x'\nrun = 'true'\nwhere = 'guest'\nexpect = '(['\n",
    "fragments-int": "fragments = 5\n" + GOOD_TOML,
    "fragments-abs": 'fragments = ["/etc/passwd"]\n' + GOOD_TOML,
    "changelog-int": "changelog = 5\n" + GOOD_TOML,
    "changelog-keys": GOOD_TOML + "[changelog]\nfoo = 5\n",
    "upstream-int": "upstream = 5\n" + GOOD_TOML,
    "domU-int": "domU = 5\n" + GOOD_TOML,
    "domU-memory-str": GOOD_TOML + "[domU]\nmemory = 'lots'\nvcpus = " + HUGE[:18] + "\n",
    "ci-int": "ci = 5\n" + GOOD_TOML,
    "ci-mode": GOOD_TOML + "[ci]\nmode = 5\nqemu_args = 'x'\n",
    "truncated": GOOD_TOML[:30],
    "binary": b"\xff\xfe\x00name",
    "name-mismatch": GOOD_TOML.replace('name = "good"', 'name = "other"'),
    "folder": None,  # series.toml is a folder
    "fifo": "fifo",  # series.toml is a FIFO
}

FILE_VARIANTS = {  # any input file the commands read
    "binary": b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4,
    "empty": b"",
    "invalid-utf8": b"\xff\xfe\xfa text \x80\n",
    "markup": f"{MARKUP}\n".encode(),
    "control": f"{CONTROL}\n".encode(),
    "huge": f"{HUGE}\n".encode(),
    "json-list": b"[1, 2, 3]",
    "json-wrong": b'{"mode": 5, "verdict": [], "cases": {"a": 1}, "stages": 5, "inputs": "x"}',
    "json-truncated": b'{"mode": "guest", "verdict": "pa',
    "toml-wrong": b'matrix = 5\n[[cell]]\nexpect = "six"\nseries = 5\n',
    "toml-cells": b'[matrix]\nseries = "x"\nbases = [5]\nmodes = [[]]\n[[cell]]\nfragments = 5\nqemu_args = "x"\n',
    "toml-huge": f'[[cell]]\nseries = "good"\nexpect = {HUGE[:18]}\n'.encode(),
    "config-huge": f"CONFIG_N={HUGE}\nCONFIG_A=y\n".encode(),
    "config-control": b"CONFIG_A=\x07y\nCONFIG_\x1bB=y\n",
    "config-markup": f'CONFIG_A="{MARKUP}"\n# {MARKUP}\n'.encode(),
    "folder": None,
    "fifo": "fifo",
}


def _put(path: Path, value) -> None:
    """Write a corpus value: bytes/str as a file, None as a folder, 'fifo' as a FIFO."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        path.mkdir()
        (path / "inner").write_text("x\n")
    elif value == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(value if isinstance(value, bytes) else value.encode())


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _run(args: list[str], env: dict | None = None):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        res = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    except Hang:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return res


def _verdict(args, res) -> str | None:
    """None when fine; else what went wrong."""
    if res is None:
        return "hung (10 s)"
    exc = res.exception
    if isinstance(exc, Hang):
        return "hung (10 s)"
    if exc is not None and not isinstance(exc, SystemExit):
        return f"exit {res.exit_code}: {type(exc).__name__}: {str(exc)[:160]}"
    if res.exit_code not in range(8):
        return f"exit {res.exit_code} (outside the README's table)"
    if "Traceback" in res.output:
        return "a traceback in the output"
    return None


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A small good workspace: a local tree with a Kconfig and one series with one patch."""
    root = tmp_path_factory.mktemp("corpus")
    repo = root / "linux-src"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@example.org",
           "GIT_COMMITTER_NAME": "C", "GIT_COMMITTER_EMAIL": "c@example.org", "GIT_CONFIG_NOSYSTEM": "1"}
    for cmd in (["init", "-q", "-b", "main"],):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    (repo / "Kconfig").write_text(KCONFIG)
    (repo / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\nEXTRAVERSION =\n")
    (repo / "f.c").write_text("".join(f"line {i}\n" for i in range(20)))
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "base"], check=True, env=env)
    (repo / "f.c").write_text("".join(f"line {i}\n" for i in range(20)).replace("line 5\n", "line 5 fixed\n"))
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-a", "-m", "f: fix line 5\n\nSigned-off-by: A <a@example.org>"],
                   check=True, env=env)
    patch = subprocess.run(["git", "-C", str(repo), "format-patch", "--zero-commit", "--stdout", "HEAD~1"],
                           check=True, env=env, capture_output=True).stdout
    subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "HEAD~1"], check=True, env=env)
    ws = root / "ws"
    (ws / "patches/good/linux").mkdir(parents=True)
    (ws / "patches/good/series.toml").write_text(GOOD_TOML)
    (ws / "patches/good/cover.md").write_text("good\n\nbody\n")
    (ws / "patches/good/linux/series").write_text("0001-f-fix-line-5.patch\n")
    (ws / "patches/good/linux/0001-f-fix-line-5.patch").write_bytes(patch)
    (ws / "kernel-configs").mkdir()
    (ws / "kernel-configs/profiles.toml").write_text('[profiles.p]\nbase = "allnoconfig"\n')
    return root, repo, ws


@pytest.fixture
def fresh(template, tmp_path, monkeypatch):
    root, repo, ws_t = template
    ws = tmp_path / "ws"
    shutil.copytree(ws_t, ws)
    (ws / "kpt.toml").write_text(f'cache_dir = "{tmp_path / "cache"}"\n[trees.linux]\nsource = "{repo}"\n')
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.chdir(tmp_path)
    return ws, repo


WS_COMMANDS = [
    ["tree", "list"], ["tree", "list", "--json"], ["tree", "path", "linux"], ["series", "list"],
    ["series", "show", "good"], ["series", "new", "fresh", "--tree", "linux"], ["apply", "good"],
    ["export", "good"], ["export", "good", "--quilt", "q-out"], ["check-apply", "good", "--onto", "linux"],
    ["check-apply", "--all", "--onto", "linux"], ["mail", "good"], ["rebase", "good", "--onto", "main"],
    ["config", "p", "--srctree", "{repo}", "--no-cross-check", "-o", "o.config"],
    ["config", "explain", "A", "--srctree", "{repo}", "--base", "allnoconfig"],
    ["config", "make", "--base", "allnoconfig", "--series", "good", "--srctree", "{repo}", "--no-cross-check",
     "-o", "o.config"],
    ["build", "linux", "--profile", "nope"], ["ci", "good", "--mode", "nope"],
]

SERIES_COMMANDS = WS_COMMANDS[3:13] + [WS_COMMANDS[15]]


def _fill(args, ws, repo):
    return [a.replace("{repo}", str(repo)) for a in args]


def test_malformed_kpt_toml(fresh):
    ws, repo = fresh
    bad = []
    n = 0
    for case, value in TOML_VALUES.items():
        _put(ws / "kpt.toml", value)
        for args in WS_COMMANDS:
            n += 1
            res = _run(["-w", str(ws), *_fill(args, ws, repo)])
            why = _verdict(args, res)
            if why:
                bad.append(f"kpt.toml {case}: kpt {' '.join(args)}: {why}")
    assert not bad, f"{len(bad)} of {n}:\n" + "\n".join(bad)
    assert not Path("/tmp/kpt-pwned").exists()


def test_malformed_series(fresh):
    ws, repo = fresh
    good = ws / "patches/good"
    patch = good / "linux/0001-f-fix-line-5.patch"
    data = patch.read_bytes()
    cases = {f"series.toml {k}": ("series.toml", v) for k, v in SERIES_TOML.items()}
    cases.update({f"order {k}": ("linux/series", v) for k, v in FILE_VARIANTS.items()})
    cases.update({f"patch {k}": ("linux/0001-f-fix-line-5.patch", v) for k, v in FILE_VARIANTS.items()})
    cases.update({f"cover {k}": ("cover.md", v) for k, v in FILE_VARIANTS.items()})
    cases.update({
        "patch truncated": ("linux/0001-f-fix-line-5.patch", data[: data.index(b"+line 5 fixed")]),
        "patch no final newline": ("linux/0001-f-fix-line-5.patch", data.rstrip(b"\n")),
        "patch from crlf": ("linux/0001-f-fix-line-5.patch",
                            data.replace(b"From: A", b"From: =?UTF-8?Q?Eve=0D=0ABcc=3A_x?=")),
        "patch subject markup": ("linux/0001-f-fix-line-5.patch",
                                 data.replace(b"Subject: [PATCH] f:", f"Subject: [PATCH] {MARKUP}".encode())),
        "patch path octal": ("linux/0001-f-fix-line-5.patch",
                             data.replace(b"a/f.c b/f.c", b'"a/\\056\\056/x" "b/\\056\\056/x"')),
        "patch .git path": ("linux/0001-f-fix-line-5.patch", data.replace(b"f.c", b".git/config")),
        "order names a folder": ("linux/series", b"../linux\n"),
        "order markup": ("linux/series", f"{MARKUP}\n".encode()),
    })
    bad = []
    n = 0
    keep = ws.parent / "good-series"
    shutil.copytree(good, keep)
    for case, (rel, value) in cases.items():
        shutil.rmtree(good)
        shutil.copytree(keep, good)
        _put(good / rel, value)
        for args in SERIES_COMMANDS:
            n += 1
            res = _run(["-w", str(ws), *_fill(args, ws, repo)])
            why = _verdict(args, res)
            if why:
                bad.append(f"{case}: kpt {' '.join(args)}: {why}")
    assert not bad, f"{len(bad)} of {n}:\n" + "\n".join(bad)


def test_malformed_input_files(fresh, tmp_path):
    ws, repo = fresh
    f = tmp_path / "input"
    run = tmp_path / "run"
    commands = [
        (None, ["results", str(run)]), (None, ["results", str(run), "--json"]),
        (None, ["report", str(run)]), (None, ["report", str(run), "--format", "html"]),
        (None, ["report", str(run), "--format", "junit"]), (None, ["report", str(run), "--format", "json"]),
        ("manifest", ["report", str(run), "--format", "html"]), ("manifest", ["report", str(run)]),
        ("file", ["ci", "--matrix", str(f), "--emit", "gitlab", "-o", str(tmp_path / "child.yml")]),
        ("file", ["ci", "--matrix", str(f)]),
        ("file", ["config", "--base", "allnoconfig", "-f", str(f), "--srctree", str(repo), "--no-cross-check",
                  "-o", str(tmp_path / "o.config")]),
        ("file", ["config", "--base", str(f), "--srctree", str(repo), "--no-cross-check", "-o", str(tmp_path / "o2")]),
        ("file", ["config", "diff", str(f), str(f)]),
        ("file", ["series", "import", str(f), "--tree", "linux", "--name", "imp"]),
        ("file", ["boot", "--kernel", str(f), "--timeout", "5"]),
        ("file", ["boot", "--kernel", str(f), "--initrd", str(f), "--timeout", "5"]),
        ("file", ["image", "initramfs", "--kernel-build", str(f)]),
    ]
    bad = []
    n = 0
    for case, value in FILE_VARIANTS.items():
        for which, args in commands:
            if run.exists():
                shutil.rmtree(run)
            run.mkdir()
            if which is None:
                _put(run / "results.json", value)
            elif which == "manifest":
                (run / "results.json").write_text('{"mode": "guest", "verdict": "pass"}')
                _put(run / "manifest.json", value)
            else:
                _put(f, value)
            n += 1
            res = _run(["-w", str(ws), *args])
            why = _verdict(args, res)
            if why:
                bad.append(f"{which or 'results.json'} {case}: kpt {' '.join(a.replace(str(tmp_path), '') for a in args)}: {why}")
    assert not bad, f"{len(bad)} of {n}:\n" + "\n".join(bad)


def test_user_data_is_printed_verbatim(fresh):
    ws, repo = fresh
    (ws / "patches/good/series.toml").write_text(GOOD_TOML.replace('summary = "good"', f'summary = "{MARKUP}"'))
    res = _run(["-w", str(ws), "series", "list"])
    assert res.exit_code == 0, res.output
    assert "[/b]" in res.output and "[bold]x[/bold]" in res.output and ":x:" in res.output
    # The consoles interpret no markup, so nothing may be escape()d either: no backslashes.
    assert "\\[" not in res.output
    (ws / "kpt.toml").write_text((ws / "kpt.toml").read_text() + '[trees.other]\nsource = "/x/[b]y[/b]"\n')
    res = _run(["-w", str(ws), "tree", "list"])
    assert res.exit_code == 0 and "/x/[b]y[/b]" in res.output and "\\[" not in res.output, res.output
    res = _run(["-w", str(ws), "series", "show", MARKUP])
    assert res.exit_code == 2 and MARKUP in res.output.replace("\n", "")


@pytest.mark.parametrize("args", [["series", "list"], ["apply", "good"], ["tree", "list"],
                                  ["check-apply", "good", "--onto", "linux"], ["mail", "good"]])
def test_git_missing_from_path_is_exit_7(fresh, args):
    ws, repo = fresh
    res = _run(["-w", str(ws), *args], env={"PATH": "/nonexistent"})
    assert _verdict(args, res) is None, res.output
    assert res.exit_code in (0, 7), res.output
    if res.exit_code == 7:
        assert "git" in res.output


DEBIAN_SRC_VALUES = ["", " ", MARKUP, "x=-1", "-x", "qemu=", "Q", "a" * 5000, "\x07", "qemu=1.0 x", "ü",
                     "qemu=1.0\nx", "=1.0", "../qemu", "qemu==1"]


def test_malformed_debian_src_values_are_exit_2_before_any_fetch(fresh):
    """Nothing here reaches apt: each is refused when parsed (or its --tree when picked)."""
    ws, repo = fresh
    before = (ws / "kpt.toml").read_bytes()
    bad = []
    runs = [["series", "import", "--debian-src", v] for v in DEBIAN_SRC_VALUES]
    runs += [["series", "import", "--debian-src", "qemu", "--tree", t] for t in ("linux", "../x", MARKUP, "a.lock")]
    runs += [["series", "import", "x", "--debian-src", "qemu"], ["series", "import", "--debian-src", "qemu",
                                                                  "--base", "main"]]
    for args in runs:
        res = _run(["-w", str(ws), *args])
        why = _verdict(args, res) or (None if res.exit_code == 2 else f"exit {res.exit_code}: {res.output[:200]}")
        if why:
            bad.append(f"kpt {' '.join(args)[:80]!r}: {why}")
    assert not bad, "\n".join(bad)
    assert (ws / "kpt.toml").read_bytes() == before and not (ws / "patches/debian-qemu").exists()
