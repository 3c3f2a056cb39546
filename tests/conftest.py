"""Shared fixtures: the real-data folder (skipped where absent) and small synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_stnuc.io_utils import shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$WSI_STNUC_DATA`` or ``../shared/data``; tests that need it skip where it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set WSI_STNUC_DATA)")
    return path


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


@pytest.fixture(scope="session")
def cmu_slide(data_dir: Path) -> Path:
    return require(data_dir / "slides" / "CMU-1-Small-Region.svs")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where no CUDA device is present (CI never has one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
