"""pytools: a tree's pythondeps.toml read, version specs, kpt's own venv of a pinned tool.

The venv tests make a real venv with the host's python3 and pip-install a
small real wheel built here, served from a local folder (PIP_NO_INDEX +
PIP_FIND_LINKS): no network in the fast tests.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from kpatch_tool import pytools
from kpatch_tool.errors import KptError, PrereqError, UsageError

PYTHONDEPS = """
[meson]
meson = { accepted = ">=1.5.0", installed = "1.9.0", canary = "meson" }
[docs]
sphinx = { accepted = ">=3.4.3", installed = "6.2.1" }
"""


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal real wheel: one module printing its version, and a console script."""
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}_fake/__init__.py": f"def main():\n    print('{version}')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{name} = {name}_fake:main\n",
    }
    record = []
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text.encode())}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return whl


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip reads wheels from a folder of ours only."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def test_requirement_reads_the_group_entry(tmp_path):
    (tmp_path / "pythondeps.toml").write_text(PYTHONDEPS)
    req = pytools.requirement(tmp_path)
    assert (req.name, req.accepted, req.installed) == ("meson", ">=1.5.0", "1.9.0")
    assert pytools.requirement(tmp_path, "docs", "sphinx").installed == "6.2.1"


def test_a_tree_without_pythondeps_has_no_requirement(tmp_path):
    assert pytools.requirement(tmp_path) is None


@pytest.mark.parametrize("text", ["[meson\n", "[docs]\nx = 1\n", '[meson]\nmeson = { accepted = "~1.5" }\n',
                                  '[meson]\nmeson = { accepted = ">=1", installed = "1.0; rm" }\n'])
def test_an_unreadable_pythondeps_is_a_usage_error(tmp_path, text):
    (tmp_path / "pythondeps.toml").write_text(text)
    with pytest.raises(UsageError, match="pythondeps.toml"):
        pytools.requirement(tmp_path)


@pytest.mark.parametrize("version,spec,ok", [
    ("1.0.1", ">=1.5.0", False), ("1.9.0", ">=1.5.0", True), ("1.5", ">=1.5.0", True),
    ("1.5.0", ">1.5", False), ("0.63.3", ">=0.63.0,<1", True), ("1.0.1", ">=0.63.0,<1", False),
    ("1.9.0", "==1.9.0", True), ("1.9.0", "!=1.9", False), ("2.0", "", True),
])
def test_satisfies(version, spec, ok):
    assert pytools.satisfies(version, spec) is ok


def test_ensure_installs_the_pinned_version_once(tmp_path, local_index):
    make_wheel(local_index, "meson", "9.9.1")
    make_wheel(local_index, "meson", "9.9.2")
    (tmp_path / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=9", installed = "9.9.1" }\n')
    req = pytools.requirement(tmp_path)
    said: list[str] = []
    env = pytools.ensure(tmp_path / "cache", req, progress=said.append)
    assert env.version == "9.9.1" and env.python.exists()
    assert env.wheel_sha256 == hashlib.sha256((local_index / "meson-9.9.1-py3-none-any.whl").read_bytes()).hexdigest()
    assert any("installing meson 9.9.1 from PyPI" in s for s in said)
    out = pytools.proc.run([env.path / "bin" / "meson"], timeout=60)
    assert out.stdout.strip() == "9.9.1"
    ident = env.identity()
    assert ident["version"] == "9.9.1" and ident["python"].startswith("Python 3")
    # Second time: the venv is there, nothing is installed.
    said.clear()
    again = pytools.ensure(tmp_path / "cache", req, progress=said.append)
    assert again == env and not said


def test_a_half_made_venv_is_made_again(tmp_path, local_index):
    make_wheel(local_index, "meson", "9.9.1")
    (tmp_path / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=9", installed = "9.9.1" }\n')
    req = pytools.requirement(tmp_path)
    env = pytools.ensure(tmp_path / "cache", req)
    (env.path / pytools.DONE).unlink()
    (env.path / "stale").write_text("x")
    again = pytools.ensure(tmp_path / "cache", req)
    assert again.version == "9.9.1" and not (env.path / "stale").exists()


def test_a_version_pypi_does_not_have_is_exit_7(tmp_path, local_index):
    (tmp_path / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=9", installed = "9.9.3" }\n')
    with pytest.raises(PrereqError, match="meson 9.9.3: cannot fetch it from PyPI") as exc:
        pytools.ensure(tmp_path / "cache", pytools.requirement(tmp_path))
    assert exc.value.exit_code == 7


def test_a_wheel_whose_hash_is_not_the_known_one_is_refused(tmp_path, local_index, monkeypatch):
    make_wheel(local_index, "meson", "9.9.1")
    monkeypatch.setitem(pytools.KNOWN_WHEELS, ("meson", "9.9.1"), "0" * 64)
    (tmp_path / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=9", installed = "9.9.1" }\n')
    with pytest.raises(KptError, match="is not the 0000"):
        pytools.ensure(tmp_path / "cache", pytools.requirement(tmp_path))


def test_no_installed_version_is_a_usage_error(tmp_path):
    (tmp_path / "pythondeps.toml").write_text('[meson]\nmeson = { accepted = ">=9" }\n')
    with pytest.raises(UsageError, match="no installed"):
        pytools.ensure(tmp_path / "cache", pytools.requirement(tmp_path))
