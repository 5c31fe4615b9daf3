"""Atomic writes: the old content or the new, never half, and no temporary file left."""

from __future__ import annotations

import os

import pytest

from deepfake_detector.files import write_atomically


def test_writes_text_and_bytes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "state.json"
    assert write_atomically(target, '{"epoch": 1}') == target
    write_atomically(target, b'{"epoch": 2}')
    assert target.read_bytes() == b'{"epoch": 2}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_scratch(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
