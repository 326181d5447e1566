"""safefs: what lands on disk from outside input."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from kpatch_tool import safefs


def _tar(*members: tarfile.TarInfo) -> tarfile.TarFile:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    raw.seek(0)
    return tarfile.open(fileobj=raw)


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    m.size = 1 if kind == tarfile.REGTYPE else 0
    return m


def test_plain_files_and_relative_links_are_unpacked(tmp_path):
    safefs.extract_tar(_tar(_member("debian/patches/series"), _member("debian/patches/l", tarfile.SYMTYPE, "series")),
                       tmp_path)
    assert (tmp_path / "debian/patches/series").read_bytes() == b"x"
    assert (tmp_path / "debian/patches/l").is_symlink()


@pytest.mark.parametrize("bad", [
    _member("../escape"), _member("/abs"), _member("a/../../b"),
    _member("l", tarfile.SYMTYPE, "/etc/passwd"), _member("l", tarfile.SYMTYPE, "../../x"),
    _member("h", tarfile.LNKTYPE, "a"), _member("dev", tarfile.CHRTYPE),
])
def test_a_member_that_could_leave_the_folder_is_refused_and_nothing_written(tmp_path, bad):
    """Debian 12's Python 3.11.2 has no extraction filters: the check must not rely on them."""
    with pytest.raises(ValueError, match="would land outside"):
        safefs.extract_tar(_tar(_member("ok"), bad), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_without_extraction_filters_as_on_python_3_11_2(tmp_path, monkeypatch):
    """Debian 12's own Python predates tarfile's filters (3.11.4): extractall gets no filter=."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    safefs.extract_tar(_tar(_member("a/b")), tmp_path)
    assert (tmp_path / "a/b").read_bytes() == b"x"
    with pytest.raises(ValueError):
        safefs.extract_tar(_tar(_member("../c")), tmp_path / "d")


def test_a_files_hash_is_read_again_only_when_the_file_changed(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"a" * 10)
    first = safefs.sha256_file(f)
    assert safefs.sha256_file(f) == first == hashlib.sha256(b"a" * 10).hexdigest()
    f.write_bytes(b"b" * 11)  # another size (and mtime): read again
    assert safefs.sha256_file(f) == hashlib.sha256(b"b" * 11).hexdigest()
    tmp = tmp_path / "new"
    tmp.write_bytes(b"c")
    os.replace(tmp, f)  # another inode, as every cache write is made
    assert safefs.sha256_file(f) == hashlib.sha256(b"c").hexdigest()
