"""safefs: what lands on disk from outside input."""

from __future__ import annotations

import hashlib
import io
import json
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


@pytest.fixture
def memo(tmp_path, monkeypatch):
    """A digest memo in tmp_path; each `fresh()` is what a new kpt process starts with."""
    path = tmp_path / "cache" / "digests.json"
    monkeypatch.setattr(safefs, "MEMO_MIN_SIZE", 1)
    monkeypatch.setattr(safefs, "RACY_NS", 0)
    monkeypatch.setattr(safefs, "_MEMO_PATH", None)
    monkeypatch.setattr(safefs, "_MEMO", None)
    monkeypatch.setattr(safefs, "_MEMO_NEW", {})

    def fresh():
        safefs.flush_digest_memo()
        safefs._HASHES.clear()
        safefs._MEMO = None
        safefs.use_digest_memo(path)

    safefs.use_digest_memo(path)
    yield fresh
    safefs.flush_digest_memo()
    monkeypatch.setattr(safefs, "_MEMO_PATH", None)


def _counting_open(monkeypatch):
    reads = []
    real_open = open

    def counting(p, *a, **kw):
        reads.append(str(p))
        return real_open(p, *a, **kw)

    monkeypatch.setattr("builtins.open", counting)
    return reads


def test_a_later_run_takes_a_big_files_digest_from_the_memo_without_reading_it(tmp_path, memo, monkeypatch):
    f = tmp_path / "rootfs.cpio"
    f.write_bytes(b"x" * 4096)
    want = hashlib.sha256(b"x" * 4096).hexdigest()
    assert safefs.sha256_file(f) == want
    memo()
    reads = _counting_open(monkeypatch)
    assert safefs.sha256_file(f) == want
    assert str(f) not in reads


def test_a_file_rewritten_with_its_old_size_and_mtime_put_back_is_read_again(tmp_path, memo, monkeypatch):
    """ctime is part of the key: `touch -d` cannot make changed bytes look unchanged."""
    f = tmp_path / "vmlinux"
    f.write_bytes(b"a" * 4096)
    assert safefs.sha256_file(f) == hashlib.sha256(b"a" * 4096).hexdigest()
    st = f.stat()
    with open(f, "r+b") as fh:  # same inode, same size
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    memo()
    assert safefs.sha256_file(f) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()


def test_a_file_changed_moments_ago_is_not_remembered(tmp_path, memo, monkeypatch):
    monkeypatch.setattr(safefs, "RACY_NS", 3_000_000_000)
    f = tmp_path / "modules.tar"
    f.write_bytes(b"m" * 4096)
    safefs.sha256_file(f)
    memo()
    reads = _counting_open(monkeypatch)
    safefs.sha256_file(f)
    assert str(f) in reads


def test_a_broken_memo_file_is_ignored_and_replaced(tmp_path, memo):
    path = tmp_path / "cache" / "digests.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    memo()
    f = tmp_path / "f"
    f.write_bytes(b"z" * 100)
    assert safefs.sha256_file(f) == hashlib.sha256(b"z" * 100).hexdigest()
    memo()
    assert str(f.resolve()) in json.loads(path.read_text())
