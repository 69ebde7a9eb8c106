"""Tier 2: atomic writes (phi3v.files): a reader finds the old content or the whole new one."""

from __future__ import annotations

import pytest

from phi3v.files import atomic_write, atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.unit


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    assert atomic_write_text(target, "new ü") == target
    assert target.read_text(encoding="utf-8") == "new ü"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "manifest.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, "wb") as handle:
            handle.write(b"half of the new")
            assert target.read_bytes() == b"old"  # nothing visible under the name while writing
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]
