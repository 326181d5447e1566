"""Who gets each mail: the tree's own MAINTAINERS, read by its own script.

Linux, QEMU and Xen all ship scripts/get_maintainer.pl; it runs per patch in
the series' worktree (so it reads the MAINTAINERS of the base the series goes
to). Maintainers (and supporters, odd fixers) go to To, reviewers and lists to
Cc, as b4's default to/cc commands split them. A tree's `.b4-config` wins
when it names its own commands (`send-auto-to-cmd`, `send-auto-cc-cmd`, run
with the patch on stdin, as b4 does) and its series lists
(`send-series-to`, `send-series-cc`). The project's list is always there
(qemu-devel, xen-devel; Linux's lists come from MAINTAINERS), and
series.toml's per-tree `to`, `cc` and `list` are added on top.
"""

from __future__ import annotations

import email.utils
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kpatch_tool import gitutil, proc
from kpatch_tool.errors import UsageError

PROJECT_LIST = {"qemu": "qemu-devel@nongnu.org", "xen": "xen-devel@lists.xenproject.org"}
GET_MAINTAINER = ["--no-git", "--no-git-fallback", "--no-rolestats", "--roles"]
TO_ROLES = ("maintainer", "supporter", "odd fixer", "chief penguin")
ROLE_RE = re.compile(r"^(?P<addr>.*?)\s*\((?P<role>[^()]*)\)\s*$")


@dataclass
class Recipients:
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)  # the mailing lists among to/cc

    def _has(self, addr: str) -> bool:
        key = email.utils.parseaddr(addr)[1].lower()
        return any(email.utils.parseaddr(a)[1].lower() == key for a in self.to + self.cc)

    def add_to(self, *addrs: str) -> None:
        for a in addrs:
            a = a.strip()
            if not a:
                continue
            key = email.utils.parseaddr(a)[1].lower()
            # Moving an address up from Cc to To, never listing it twice.
            self.cc = [c for c in self.cc if email.utils.parseaddr(c)[1].lower() != key]
            if not any(email.utils.parseaddr(t)[1].lower() == key for t in self.to):
                self.to.append(a)

    def add_cc(self, *addrs: str) -> None:
        for a in addrs:
            a = a.strip()
            if a and not self._has(a):
                self.cc.append(a)

    def add_list(self, *addrs: str) -> None:
        for a in addrs:
            key = email.utils.parseaddr(a)[1].lower()
            if key and key not in {email.utils.parseaddr(x)[1].lower() for x in self.lists}:
                self.lists.append(a)

    def merge(self, other: Recipients) -> None:
        self.add_to(*other.to)
        self.add_cc(*other.cc)
        self.add_list(*other.lists)

    def to_dict(self) -> dict:
        return {"to": list(self.to), "cc": list(self.cc)}


def b4_config(worktree: Path) -> dict[str, str]:
    """The tree's .b4-config [b4] keys (git-config syntax), or {}."""
    path = Path(worktree) / ".b4-config"
    if not path.is_file():
        return {}
    res = gitutil.git(None, "config", "-f", str(path), "--get-regexp", r"^b4\.", cwd=worktree)
    out = {}
    for line in res.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key[3:].lower()] = value.strip()
    return out


def _clean(line: str) -> str:
    line = line.strip()
    m = ROLE_RE.match(line)
    return m["addr"] if m else line


def _run_cmd(worktree: Path, cmd: str, patch: Path, what: str, log) -> list[str]:
    argv = shlex.split(cmd)
    if argv and argv[0].endswith(".pl") and not Path(argv[0]).is_absolute():
        # b4 runs the command from the top of the tree; make sure perl is used
        # even when the script lost its execute bit in a tarball import.
        argv = ["perl", *argv]
    res = proc.run(argv, cwd=worktree, input=patch.read_text(encoding="utf-8", errors="replace"),
                   timeout=120, log=log)
    if not res.ok:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise UsageError(f"{what} ({cmd}) failed on {patch.name} in {worktree}: exit {res.returncode}",
                         detail="\n".join(tail))
    return [_clean(l) for l in res.stdout.splitlines() if l.strip()]


def for_patch(worktree: Path, patch: Path, kind: str, b4cfg: dict[str, str] | None = None,
              *, log=None) -> Recipients:
    """To/Cc for one patch mail, from the tree's own tools."""
    worktree = Path(worktree)
    b4cfg = b4_config(worktree) if b4cfg is None else b4cfg
    rec = Recipients()
    to_cmd, cc_cmd = b4cfg.get("send-auto-to-cmd"), b4cfg.get("send-auto-cc-cmd")
    if to_cmd or cc_cmd:
        if to_cmd:
            rec.add_to(*_run_cmd(worktree, to_cmd, patch, ".b4-config send-auto-to-cmd", log))
        if cc_cmd:
            rec.add_cc(*_run_cmd(worktree, cc_cmd, patch, ".b4-config send-auto-cc-cmd", log))
        return rec
    script = worktree / "scripts" / "get_maintainer.pl"
    if not script.is_file():
        raise UsageError(f"no scripts/get_maintainer.pl in {worktree} (and no .b4-config auto-to/cc command)")
    proc.require("perl", "perl")
    res = proc.run(["perl", "scripts/get_maintainer.pl", *GET_MAINTAINER, str(patch)],
                   cwd=worktree, timeout=120, log=log)
    if not res.ok:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise UsageError(f"scripts/get_maintainer.pl failed on {patch.name} in {worktree}: exit {res.returncode}",
                         detail="\n".join(tail))
    for line in res.stdout.splitlines():
        line = line.strip()
        if not line or "@" not in line:
            continue
        m = ROLE_RE.match(line)
        addr, role = (m["addr"], m["role"].lower()) if m else (line, "")
        if role.startswith(TO_ROLES):
            rec.add_to(addr)
        else:
            rec.add_cc(addr)
        if "list" in role:
            rec.add_list(addr)
    return rec


def for_series(worktree: Path, patches: list[Path], kind: str, *, to: list[str] = (),
               cc: list[str] = (), mlist: str | None = None, log=None,
               say=None) -> tuple[dict[str, Recipients], Recipients]:
    """Recipients per patch file (by name) and for the cover letter (the union).

    to/cc/mlist are the series.toml overrides for this tree. A tree without a
    get_maintainer.pl is an error unless series.toml names recipients.
    """
    worktree = Path(worktree)
    b4cfg = b4_config(worktree)
    lists = []
    if mlist:
        lists.append(mlist)
    if b4cfg.get("send-series-to"):
        lists += [a.strip() for a in b4cfg["send-series-to"].split(",")]
    if kind in PROJECT_LIST:
        lists.append(PROJECT_LIST[kind])
    series_cc = [a.strip() for a in b4cfg.get("send-series-cc", "").split(",") if a.strip()]
    has_tool = bool(b4cfg.get("send-auto-to-cmd") or b4cfg.get("send-auto-cc-cmd")
                    or (worktree / "scripts" / "get_maintainer.pl").is_file())
    if not has_tool and not (to or cc):
        raise UsageError(
            f"no scripts/get_maintainer.pl in {worktree} to find the maintainers; "
            f"name them in series.toml ([trees.<tree>] to = [...], cc = [...])")
    per: dict[str, Recipients] = {}
    cover = Recipients()
    for p in patches:
        rec = Recipients()
        rec.add_to(*lists, *to)
        rec.add_list(*lists)
        if has_tool:
            rec.merge(for_patch(worktree, p, kind, b4cfg, log=log))
        elif say:
            say(f"{p.name}: no get_maintainer.pl in the tree; recipients from series.toml only")
        rec.add_cc(*series_cc, *cc)
        per[p.name] = rec
        cover.merge(rec)
    if not patches:
        cover.add_list(*lists)
        cover.add_to(*lists, *to)
        cover.add_cc(*series_cc, *cc)
    return per, cover
