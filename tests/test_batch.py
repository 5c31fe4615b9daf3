"""Scoring many files (``inference.py predict``): one file's failure is its own row."""

from __future__ import annotations

import pytest

from tests.helpers import GridFinder


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns of the corrupt EXIF it skips
@pytest.mark.parametrize("finder", [None, GridFinder(2)], ids=["whole-image", "faces"])
def test_a_file_that_broke_the_decoder_is_its_own_row_and_the_others_are_scored(detector, tmp_path, fake_png, finder):
    """A mistyped EXIF tag made exif_transpose raise TypeError: ``predict DIR`` stopped and wrote no rows."""
    from deepfake_detector.batch import expand_paths, score_files
    from harness.hostile import mistyped_exif_jpeg, mutants

    (tmp_path / "a.png").write_bytes(fake_png)
    (tmp_path / "b_mistyped_exif.jpg").write_bytes(mistyped_exif_jpeg())
    for name, data in mutants({"m.jpg": mistyped_exif_jpeg()}, count=10, seed=2):
        (tmp_path / f"c{name}").write_bytes(data)
    (tmp_path / "d.png").write_bytes(fake_png)
    paths = list(expand_paths([tmp_path]))
    rows = list(score_files(detector, paths, batch_size=4, workers=2, finder=finder))
    assert sorted({row.path for row in rows}) == paths  # every file has its rows
    by_file = {row.path: row for row in rows}
    for name in ("a.png", "b_mistyped_exif.jpg", "d.png"):
        assert by_file[str(tmp_path / name)].label in ("fake", "real") and not by_file[str(tmp_path / name)].error
    assert all(row.label or row.error for row in rows)
