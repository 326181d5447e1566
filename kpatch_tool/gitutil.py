"""Running git for the series stages: argument lists, and an environment that
makes the output depend on the inputs only.

The user's global and system git config may set things that change bytes we
promise to keep stable (format.signature, diff.noprefix, commit.gpgsign,
am.threeWay, core.abbrev...). Our commands run with those files switched off
and a fixed committer, so the same patches on the same base give the same
commit ids and the same exported files on any machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from kpatch_tool import proc
from kpatch_tool.errors import UsageError
from kpatch_tool.proc import ProcResult

COMMITTER_NAME = "kpatch-tool"
COMMITTER_EMAIL = "kpt@localhost"

# Per-command overrides of repository-level config that would change output.
STABLE_CONFIG = [
    "-c", "core.abbrev=12",
    "-c", "core.quotePath=true",
    "-c", "diff.noprefix=false",
    "-c", "diff.mnemonicPrefix=false",
    "-c", "diff.relative=false",
    "-c", "diff.renames=true",
    "-c", "diff.algorithm=myers",
    "-c", "diff.suppressBlankEmpty=false",
    "-c", "format.signOff=false",
    "-c", "format.coverLetter=false",
    "-c", "format.outputDirectory=",
    "-c", "commit.gpgSign=false",
    "-c", "am.threeWay=false",
    "-c", "am.keepcr=false",
    "-c", "apply.whitespace=nowarn",
    "-c", "i18n.commitEncoding=UTF-8",
    "-c", "i18n.logOutputEncoding=UTF-8",
]


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("GIT_") or k in ("GIT_EXEC_PATH",)}
    e.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_COMMITTER_NAME=COMMITTER_NAME,
        GIT_COMMITTER_EMAIL=COMMITTER_EMAIL,
        LC_ALL="C",
        LANG="C",
    )
    if extra:
        e.update(extra)
    return e


def git(repo: Path | str | None, *args, cwd=None, extra_env=None, input=None,
        timeout: float | None = 600, check: bool = False, text: bool = True,
        log=None) -> ProcResult:
    """git with our stable config; repo is a git dir (None: use cwd)."""
    argv = ["git", *STABLE_CONFIG]
    if repo is not None and cwd is None:
        argv += ["--git-dir", str(repo)]
    argv += [str(a) for a in args]
    res = proc.run(argv, cwd=cwd, env=env(extra_env), input=input, timeout=timeout,
                   check=check, text=text, log=log)
    if not res.ok:
        err = res.stderr if isinstance(res.stderr, str) else res.stderr.decode("utf-8", "replace")
        if "No space left on device" in err or "Disk quota exceeded" in err:
            # Said once, here: git's own last line names a temporary file, or nothing useful.
            raise UsageError(f"no space left on {cwd or repo or '.'} (git {_subcommand(args)})")
    return res


def _subcommand(args) -> str:
    i = 0
    while i < len(args) and str(args[i]).startswith("-"):
        i += 2 if str(args[i]) == "-c" else 1
    return str(args[i]) if i < len(args) else "git"


def rev(repo: Path, ref: str) -> str | None:
    res = git(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
    return res.stdout.strip() if res.ok else None
