"""Per-slide overview: written beside the NucleusTable, the right size, counts that add up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.inference.infer import infer_slide
from wsi_stnuc.inference.overview import SIZE_PX, class_grid, overview_path, write_overview


def _helpers():
    spec = importlib.util.spec_from_file_location("_t", Path(__file__).with_name("test_infer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()


def test_infer_writes_the_overview_beside_the_table(tmp_path):
    path, _ = H.synthetic_slide(tmp_path / "s.tif", size=(300, 260), seed=3)
    res = infer_slide(H.oracle(), path, tmp_path / "out", core=64, halo=24, tissue=False,
                      workers=1, progress=False)  # fmt: skip
    png = overview_path(res.parquet)
    assert png == tmp_path / "out" / "s.overview.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == SIZE_PX
        assert np.asarray(im.convert("L")).std() > 10


def test_class_grid_counts_every_nucleus_once(tmp_path):
    rng = np.random.default_rng(0)
    n = 200_000  # a slide's worth of centroids: binned, never drawn one by one
    table = pd.DataFrame({
        "centroid_x": rng.uniform(0, 40_000, n), "centroid_y": rng.uniform(0, 30_000, n),
        "class_name": rng.choice(["a", "b", "unknown", "weird"], n),
    })  # fmt: skip
    table.to_parquet(tmp_path / "t.parquet")
    classes = ClassTable.from_names(["a", "b"])
    grid = class_grid(tmp_path / "t.parquet", (40_000, 30_000), 0.25, classes)
    assert grid.counts.sum() == n and max(grid.counts.shape[:2]) <= 400
    per_class = grid.counts.sum(axis=(0, 1))
    assert per_class[0] == (table["class_name"] == "a").sum()
    assert per_class[2] == table["class_name"].isin(["unknown", "weird"]).sum()
    thumb = np.full((300, 400, 3), 230, np.uint8)
    png = write_overview(tmp_path / "o.png", tmp_path / "t.parquet", thumb, (40_000, 30_000),
                         0.25, classes, tissue_mm2=75.0)  # fmt: skip
    with Image.open(png) as im:
        assert im.size == SIZE_PX
