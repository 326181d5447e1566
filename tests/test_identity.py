"""Placeholder identities and the developer's own from git config (real git, tmp repos)."""

from __future__ import annotations

import subprocess

import pytest

from kpatch_tool import identity
from kpatch_tool.errors import UsageError


@pytest.mark.parametrize("who", [
    "Kpatch Developers <kpt-dev@example.org>", "a@example.com", "a@lists.example.net",
    "A <a@host.invalid>", "a@b.test", "a@foo.example", "root@localhost", "me@box.localdomain",
    "root@host.(none)", "a@printer.local", "a@svc.internal", "a@nas.home.arpa", "a@EXAMPLE.ORG.",
    "no address at all", "a@singlelabel",
])
def test_reserved_and_local_identities_are_placeholders(who):
    assert identity.is_placeholder(who), who


@pytest.mark.parametrize("who", [
    "Petr Pavlu <petr.pavlu@suse.com>", "Juergen Gross <jgross@suse.com>", "a@example.org.uk",
    "a@notexample.com", "a@testing.org", "Edgar E. Iglesias <edgar.iglesias@gmail.com>",
])
def test_public_identities_are_not_placeholders(who):
    assert identity.placeholder_reason(who) is None, who


def test_the_reason_names_the_address_and_the_reserved_name():
    why = identity.placeholder_reason("Kpatch Developers <kpt-dev@example.org>")
    assert "kpt-dev@example.org" in why and "example.org" in why and "RFC 2606" in why


def _repo(tmp_path, monkeypatch, **config):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    (tmp_path / "gitconfig").write_text("")
    repo = tmp_path / "ws"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for k, v in config.items():
        subprocess.run(["git", "-C", str(repo), "config", f"user.{k}", v], check=True)
    return repo


def test_git_identity_reads_user_name_and_email(tmp_path, monkeypatch):
    repo = _repo(tmp_path, monkeypatch, name="Dev Eloper", email="dev@kpt-tests.org")
    assert str(identity.git_identity(repo)) == "Dev Eloper <dev@kpt-tests.org>"


def test_git_identity_unset_is_refused_naming_the_key(tmp_path, monkeypatch):
    repo = _repo(tmp_path, monkeypatch, name="Dev Eloper")
    with pytest.raises(UsageError, match="user.email not set") as exc:
        identity.git_identity(repo)
    assert exc.value.exit_code == 2


def test_git_identity_on_a_reserved_domain_is_refused(tmp_path, monkeypatch):
    repo = _repo(tmp_path, monkeypatch, name="Dev", email="dev@example.com")
    with pytest.raises(UsageError, match="dev@example.com is on example.com"):
        identity.git_identity(repo)
