from __future__ import annotations

import pytest

from wsi_stnuc.io_utils import atomic_path, shared_data_dir


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert not (tmp_path / "sub" / "out.txt.partial").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def test_shared_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WSI_STNUC_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path


def test_atomic_write_does_not_walk_its_folder(tmp_path, monkeypatch):
    """Writing one file syncs its folder's entry, never the files of other writers beside it
    (a walk races with their removal: two slides of a cohort in one process)."""
    from pathlib import Path

    from wsi_stnuc import io_utils

    (tmp_path / "other.parts").mkdir()
    (tmp_path / "other.parts" / "batch-0.parquet").write_bytes(b"x")
    opened = []
    real_open = io_utils.os.open

    def spy(target, flags, *args):
        opened.append(Path(target))
        return real_open(target, flags, *args)

    monkeypatch.setattr(io_utils.os, "open", spy)
    with io_utils.atomic_path(tmp_path / "summary.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "summary.json").read_text() == "{}"
    assert not any("other.parts" in str(p) for p in opened), opened
