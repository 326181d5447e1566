"""kpt series signoff: taking a series over, on patch files stored from small real git repos,
then mailed through the real gates (the kernel's checkpatch.pl in a kernel-shaped fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mailfixtures as mf
from kpatch_tool import mail, signoff
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError
from kpatch_tool.identity import Ident
from kpatch_tool.series import load_series

TEAM = "Kpatch Developers <kpt-dev@example.org>"
PETR = "Petr Pavlu <petr.pavlu@suse.com>"
DEV = Ident("Dev Eloper", "dev@kpt-tests.org")


@pytest.fixture
def team_series(tmp_path, linux_src, monkeypatch):
    """s1: two patches by the team alias and one from someone else whose chain the team signed
    last (a carried patch), stored as the shipped series are. The developer's git identity is DEV."""
    monkeypatch.setenv("KPT_OUT", str(tmp_path / "out"))
    repo = mf.kernel_like_repo(tmp_path / "linux", linux_src)
    base = mf.git(repo, "rev-parse", "HEAD").strip()
    for n, (who, subject, chain) in enumerate([
            (TEAM, "foo: return the answer", [TEAM]),
            (PETR, "bar: return two", [PETR, "Juergen Gross <jgross@suse.com>", TEAM]),
            (TEAM, "bar: return three", [TEAM])], 2):
        path = "drivers/foo/foo.c" if n == 2 else "lib/bar.c"
        text = (mf.FOO_C if n == 2 else mf.BAR_C).replace("return 0" if n == 2 else "return 1", f"return {n}")
        (repo / path).write_text(text)
        trailers = "\n".join(f"Signed-off-by: {w}" for w in chain)
        mf.git(repo, "commit", "-q", "-a", f"--author={who}", "-m", f"{subject}\n\nChange {path}.\n\n{trailers}\n")
    tip = mf.git(repo, "rev-parse", "HEAD").strip()
    mf.git(repo, "checkout", "-q", "--detach", base)
    ws = mf.workspace(tmp_path / "ws", tmp_path / "cache", {"linux": repo})
    mf.store_series(ws.root, "s1", "linux", repo, base, tip, tree_toml='to = ["foo@kpt-tests.org"]')
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f"[user]\n\tname = {DEV.name}\n\temail = {DEV.email}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    # The sender is the developer too (git var reads the environment first).
    monkeypatch.setenv("GIT_AUTHOR_NAME", DEV.name)
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", DEV.email)
    return ws


def state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def kpt(ws, *args):
    return CliRunner().invoke(main, ["--workspace", str(ws.root), *args])


def test_author_takes_the_teams_patches_and_signs_the_others_last(team_series):
    diffs = [p.path.read_text().split("\n---\n", 1)[1] for p in load_series(team_series, "s1").trees["linux"].patches]
    res = signoff.signoff_series(team_series, "s1", author=True)
    s = load_series(team_series, "s1")
    p1, p2, p3 = s.trees["linux"].patches
    assert [p.author for p in (p1, p2, p3)] == [str(DEV), PETR, str(DEV)]
    chains = [[l for l in p.path.read_text().splitlines() if l.startswith("Signed-off-by:")] for p in (p1, p2, p3)]
    assert chains[0] == chains[2] == [f"Signed-off-by: {DEV}"]
    assert chains[1] == [f"Signed-off-by: {PETR}", "Signed-off-by: Juergen Gross <jgross@suse.com>",
                         f"Signed-off-by: {DEV}"]
    assert res.authored == [f"linux/{p1.file}", f"linux/{p3.file}"] and len(res.signed) == 3
    # Only the From: and Signed-off-by: lines changed: the diffs are byte-for-byte the same.
    assert [p.path.read_text().split("\n---\n", 1)[1] for p in (p1, p2, p3)] == diffs


def test_running_it_again_changes_no_byte(team_series):
    signoff.signoff_series(team_series, "s1", author=True)
    folder = team_series.patches_dir / "s1"
    before = state(folder)
    stats = {p: os.stat(folder / p).st_ino for p in before}
    res = signoff.signoff_series(team_series, "s1", author=True)
    assert not res.changed and len(res.unchanged) == 3
    assert state(folder) == before and {p: os.stat(folder / p).st_ino for p in before} == stats


def test_mail_refuses_before_and_passes_every_gate_after(team_series):
    before = mail.prepare(team_series, "s1")
    ident = next(g for g in before.trees["linux"].gates if g.name == "identity")
    assert before.unsendable and len(ident.errors) == 5, ident.errors  # 2 From:, 3 Signed-off-by
    r = kpt(team_series, "series", "signoff", "s1", "--author")
    assert r.exit_code == 0, r.output
    assert "s1: 3 signed, 2 now authored by you (Dev Eloper <dev@kpt-tests.org>; 0 unchanged)" in r.output
    after = mail.prepare(team_series, "s1")
    assert not after.blocked and not after.unsendable, after.failed_gates()
    assert all(mail.NOT_SENDABLE not in f.read_text() for f in after.trees["linux"].files)


def test_without_author_the_teams_patches_keep_a_placeholder_author_and_stay_unsendable(team_series):
    r = kpt(team_series, "series", "signoff", "s1")
    assert r.exit_code == 0, r.output
    assert "its author is still a placeholder" in r.output and "0 now authored by you" in r.output
    res = mail.prepare(team_series, "s1")
    ident = next(g for g in res.trees["linux"].gates if g.name == "identity")
    assert res.unsendable and len(ident.errors) == 2 and all(": From: " in e for e in ident.errors)


def test_a_missing_or_placeholder_git_identity_changes_nothing(team_series, tmp_path):
    folder = team_series.patches_dir / "s1"
    before = state(folder)
    (tmp_path / "gitconfig").write_text("[user]\n\tname = Dev\n")
    r = kpt(team_series, "series", "signoff", "s1", "--author")
    assert r.exit_code == 2 and "user.email not set" in r.output, r.output
    (tmp_path / "gitconfig").write_text("[user]\n\tname = Dev\n\temail = dev@lab.example.com\n")
    with pytest.raises(UsageError, match="dev@lab.example.com is on example.com"):
        signoff.signoff_series(team_series, "s1", author=True)
    assert state(folder) == before


def test_killed_at_any_step_leaves_all_old_or_all_new_patches(team_series):
    folder = team_series.patches_dir / "s1"
    old = state(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPT_TEST_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    args = [sys.executable, "-m", "kpatch_tool.cli", "--workspace", str(team_series.root), "series", "signoff",
            "s1", "--author"]
    assert subprocess.run(args, capture_output=True, env=env).returncode == 0
    new = state(folder)
    seen = set()
    for step in range(1, 40):
        for rel, data in old.items():
            (folder / rel).write_bytes(data)
        for p in folder.rglob("*"):
            if p.is_file() and str(p.relative_to(folder)) not in old:
                p.unlink()
        r = subprocess.run(args, capture_output=True, env={**env, "KPT_TEST_CRASH_AT": str(step)})
        load_series(team_series, "s1")  # recovery: finishes or undoes the change
        got = state(folder)
        assert got in (old, new), step
        seen.add("new" if got == new else "old")
        if r.returncode == 0:
            break
    assert seen == {"old", "new"}
