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
