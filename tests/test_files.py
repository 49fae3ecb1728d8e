"""cccl_lite.files.atomic_path, the one way results reach their final name:
whole or not at all, the old file kept on any error, the permissions asked
for, and nothing renamed when the writer keeps the file already there."""

import os
import stat

import pytest

from cccl_lite.files import atomic_path, temp_path, write_atomic, write_text_atomic


def test_the_file_appears_whole_and_no_temp_stays(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_path(path) as tmp:
        assert tmp == tmp_path / f".out.txt.tmp-{os.getpid()}"
        tmp.write_text("new")
        assert not path.exists()  # nothing under the final name while writing
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_keeps_the_old_file_and_removes_the_temp(tmp_path, error):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(error):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise error
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_chmod_is_given_to_the_new_file(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic("x", path, chmod=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_new_file_gets_0666_less_the_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "out.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o640


def test_a_writer_that_deletes_the_temp_keeps_the_file_there(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("kept")
    with atomic_path(path) as tmp:
        tmp.write_text("same size")
        tmp.unlink()
    assert path.read_text() == "kept"


def test_a_killed_writers_temp_is_removed_first(tmp_path):
    path = tmp_path / "out.txt"
    stale = path.with_name(".out.txt.tmp-999999999")  # no such process
    stale.write_text("left by kill -9")
    write_text_atomic("ü", path, encoding="utf-8")
    assert path.read_bytes() == "ü".encode("utf-8")
    assert not stale.exists() and not temp_path(path).exists()
