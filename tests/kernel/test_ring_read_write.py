"""IORING_OP_READ / WRITE on files (explicit offsets, the file position) and pipes."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(30)


def test_write_then_read_a_file_at_offsets(ring, collect, tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        ring.prep_write(fd, b"hello world", "w", 0)
        ring.prep_write(fd, b"WORLD", "w2", 6)
        assert sorted(collect(ring, 2)) == [("w", 11, 0), ("w2", 5, 0)]
        buf = bytearray(32)
        ring.prep_read(fd, buf, "r", 0)
        assert collect(ring, 1) == [("r", 11, 0)]
        assert buf[:11] == b"hello WORLD"
        ring.prep_read(fd, buf, "r2", 6, start=1, nbytes=3)
        assert collect(ring, 1) == [("r2", 3, 0)]
        assert buf[1:4] == b"WOR"
    finally:
        os.close(fd)


def test_offset_minus_one_uses_and_advances_the_file_position(ring, collect, tmp_path):
    path = tmp_path / "pos"
    path.write_bytes(b"abcdef")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(3)
        ring.prep_read(fd, buf, "a")
        collect(ring, 1)
        ring.prep_read(fd, buf, "b", start=0, nbytes=3)
        assert collect(ring, 1) == [("b", 3, 0)]
        assert buf == b"def"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 6
    finally:
        os.close(fd)


def test_pipe_read_waits_for_the_writer(ring, collect):
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        buf = bytearray(8)
        ring.prep_read(r, buf, "r")
        assert ring.wait(1, timeout=0.05) == []
        ring.prep_write(w, b"pipe", "w")
        done = dict((c, res) for c, res, _ in collect(ring, 2))
        assert done == {"r": 4, "w": 4}
        assert buf[:4] == b"pipe"
    finally:
        os.close(r)
        os.close(w)


def test_read_from_a_bad_fd_is_ebadf(ring, collect):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    ring.prep_read(r, bytearray(4), "bad")
    ((_, res, _),) = collect(ring, 1)
    assert res == -9  # -EBADF
