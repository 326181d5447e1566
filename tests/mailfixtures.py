"""Fixture trees and series for the mail, gates and maintainers tests.

A "kernel-like" repository: the files and folders checkpatch.pl and
get_maintainer.pl look for at the top of a Linux tree (so both run in tree
mode, as they do in the real one), a small MAINTAINERS, and the kernel's real
scripts/checkpatch.pl, get_maintainer.pl, spelling.txt and
const_structs.checkpatch copied from the real Linux 6.1 checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KERNEL_SCRIPTS = ("checkpatch.pl", "get_maintainer.pl", "spelling.txt", "const_structs.checkpatch")

MAINTAINERS = """\
List of maintainers
===================

Descriptions of section entries and preferred order
---------------------------------------------------

FOO DRIVER
M:\tFoo Maintainer <foo@example.org>
R:\tFoo Reviewer <foorev@example.org>
L:\tfoo-list@vger.kernel.org
S:\tMaintained
F:\tdrivers/foo/

BAR LIBRARY
M:\tBar Maintainer <bar@example.org>
L:\tbar-list@vger.kernel.org
S:\tSupported
F:\tlib/bar.c

THE REST
M:\tLinus Torvalds <torvalds@linux-foundation.org>
L:\tlinux-kernel@vger.kernel.org
S:\tBuried alive in reporters
F:\t*
F:\t*/
"""

FOO_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>

int foo_value(void)
{
\treturn 0;
}
"""

BAR_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>

int bar_value(void)
{
\treturn 1;
}
"""

# The fixtures' identity (conftest sets it as git's too): a domain outside the reserved ones,
# so the identity gate lets it through. Tests deliver mail only to their own local servers.
AUTHOR = "Test Author <author@kpt-tests.org>"


def git(repo: Path, *args: str, env=None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def kernel_like_repo(root: Path, linux_src: Path | None, *, scripts: bool = True) -> Path:
    """A git repo shaped like a Linux tree, one commit."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for f in ("COPYING", "CREDITS", "Kbuild", "Makefile", "README"):
        (root / f).write_text(f"{f}\n")
    for d in ("Documentation", "arch", "include", "fs", "init", "ipc", "kernel", "drivers/foo", "lib", "scripts"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / ".keep").write_text("")
    (root / "MAINTAINERS").write_text(MAINTAINERS)
    (root / "drivers/foo/foo.c").write_text(FOO_C)
    (root / "lib/bar.c").write_text(BAR_C)
    if scripts:
        for s in KERNEL_SCRIPTS:
            shutil.copy2(Path(linux_src) / "scripts" / s, root / "scripts" / s)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def commit(repo: Path, path: str, text: str, subject: str, body: str = "", *, signoff: bool = True) -> str:
    (repo / path).write_text(text)
    git(repo, "add", path)
    msg = subject + "\n\n" + (body or f"Change {path} for the test.") + "\n"
    if signoff:
        msg += f"\nSigned-off-by: {AUTHOR}\n"
    git(repo, "commit", "-q", "-m", msg)
    return git(repo, "rev-parse", "HEAD").strip()


def store_series(ws_root: Path, name: str, tree: str, repo: Path, base: str, tip: str, *,
                 version: int = 1, cover: str | None = None, depends: list[str] = (),
                 extra_toml: str = "", tree_toml: str = "") -> Path:
    """Write patches/<name>/ from the commits base..tip of repo."""
    folder = ws_root / "patches" / name
    tdir = folder / tree
    tdir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["git", "-C", str(repo), "format-patch", "--zero-commit", "--no-signature",
                          "--no-numbered", "--full-index", "-o", str(tdir), f"{base}..{tip}"],
                         check=True, capture_output=True, text=True).stdout.split()
    (tdir / "series").write_text("".join(Path(p).name + "\n" for p in out))
    deps = ", ".join(f'"{d}"' for d in depends)
    (folder / "series.toml").write_text(
        f'name = "{name}"\nversion = {version}\nsummary = "{name} summary"\ndepends = [{deps}]\n'
        f'{extra_toml}\n[trees.{tree}]\nbase = "{base}"\n{tree_toml}\n')
    if cover is None:
        cover = f"foo: make foo better\n\nThis series makes foo better, for the tests of {name}.\n"
    if cover is not False:
        (folder / "cover.md").write_text(cover)
    return folder


def copy_kernel_scripts(dest: Path, linux_src: Path) -> None:
    (dest / "scripts").mkdir(parents=True, exist_ok=True)
    for s in KERNEL_SCRIPTS:
        shutil.copy2(Path(linux_src) / "scripts" / s, dest / "scripts" / s)


def add_tree(folder: Path, tree: str, repo: Path, base: str, tip: str, tree_toml: str = "") -> None:
    """Add a second tree's patches to a stored series."""
    tdir = folder / tree
    tdir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["git", "-C", str(repo), "format-patch", "--zero-commit", "--no-signature",
                          "--no-numbered", "--full-index", "-o", str(tdir), f"{base}..{tip}"],
                         check=True, capture_output=True, text=True).stdout.split()
    (tdir / "series").write_text("".join(Path(p).name + "\n" for p in out))
    with open(folder / "series.toml", "a") as fh:
        fh.write(f'\n[trees.{tree}]\nbase = "{base}"\n{tree_toml}\n')


def workspace(root: Path, cache: Path, trees: dict[str, Path]):
    """A workspace at root whose trees are the given local repositories."""
    from kpatch_tool import workspace as wsmod

    root.mkdir(parents=True, exist_ok=True)
    (root / "patches").mkdir(exist_ok=True)
    text = f'cache_dir = "{cache}"\n'
    for name, repo in trees.items():
        text += f'\n[trees.{name}]\nsource = "{repo}"\n'
    (root / "kpt.toml").write_text(text)
    return wsmod.load(root)


def linux_series(tmp_path: Path, linux_src: Path, name: str = "s1"):
    """A kernel-like repo with two commits (foo, bar) stored as series `name`.

    Returns (workspace, repo, base commit)."""
    repo = kernel_like_repo(tmp_path / "linux", linux_src)
    base = git(repo, "rev-parse", "HEAD").strip()
    commit(repo, "drivers/foo/foo.c", FOO_C.replace("return 0", "return 42"), "foo: return the answer")
    tip = commit(repo, "lib/bar.c", BAR_C.replace("return 1", "return 2"), "bar: return two")
    git(repo, "checkout", "-q", "--detach", base)
    ws = workspace(tmp_path / "ws", tmp_path / "cache", {"linux": repo})
    store_series(ws.root, name, "linux", repo, base, tip)
    return ws, repo, base
