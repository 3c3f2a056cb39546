"""What `wsi-stnuc infer` writes for QuPath, read back by QuPath's own reader (0.5.1, 0.6.0):
detections and cells, plain and zipped, with named class probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from scipy import ndimage as ndi

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.formats import LabelCols, QuPath
from wsi_stnuc.inference.infer import Segmenter, infer_slide
from wsi_stnuc.inference.stitch import label_centroids
from wsi_stnuc.slide.write import write_pyramidal_tiff

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def _forward(images: np.ndarray) -> list[tuple[np.ndarray, pd.DataFrame]]:
    """Dark pixels are nuclei; red-ish ones lean to class 2 (numbered probabilities, as the
    post-processing gives them)."""
    out = []
    for img in images:
        inst, n = ndi.label(img.astype(np.int32).sum(-1) < 3 * 128)
        labels = np.arange(1, n + 1)
        c = label_centroids(inst, labels)
        red = ndi.mean(img[..., 0] > img[..., 2], inst, labels) if n else np.zeros(0)
        p2 = np.clip(np.asarray(red, float), 0.1, 0.9)
        info = pd.DataFrame({"label": labels, "class_id": np.where(p2 > 0.5, 2, 1),
                             "det_prob": np.ones(n), "prob_1": 1 - p2, "prob_2": p2,
                             "centroid_x": c[:, 0], "centroid_y": c[:, 1]})  # fmt: skip
        out.append((inst.astype(np.int32), info))
    return out


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    img = np.full((300, 360, 3), (235, 215, 225), np.uint8)
    yy, xx = np.mgrid[:300, :360]
    for k, (cx, cy) in enumerate(rng.uniform(15, (345, 285), (40, 2))):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 25] = (70, 30, 130) if k % 2 else (130, 20, 40)
    path = tmp_path_factory.mktemp("slide") / "syn.tif"
    write_pyramidal_tiff(path, img, 0.5, tile=128, compression="zlib")
    return path


def _infer(slide: Path, out: Path, **kw):
    seg = Segmenter(_forward, 0.5, CLASSES, identity={"name": "oracle"})
    return infer_slide(seg, slide, out, core=64, halo=24, max_area_um2=100, batch_size=4, tissue=False,
                       workers=1, progress=False, **kw)  # fmt: skip


def test_named_probabilities_and_recorded_slide_path(slide, tmp_path):
    res = _infer(slide, tmp_path)
    table = gpd.read_parquet(res.parquet)
    named = LabelCols.class_probs(CLASSES.names)
    assert set(named) <= set(table.columns) and "prob_1" not in table.columns
    np.testing.assert_allclose(table[named].sum(axis=1), 1.0, rtol=1e-6)
    summary = json.loads(Path(tmp_path / "syn.summary.json").read_text())
    assert summary["slide_path"] == str(slide.resolve())


def test_detections_cells_and_zip_read_whole(qupath, slide, tmp_path):
    runs = [_infer(slide, tmp_path / "det"), _infer(slide, tmp_path / "cells", qupath_cells=True,
                                                     qupath_zip=True)]  # fmt: skip
    summaries = qupath.read_whole(*[Path(r.geojson) for r in runs])
    for res, summary, kind in zip(runs, summaries, ("detection", "cell"), strict=True):
        assert summary["object_types"][kind] == res.n_nuclei > 20
        names = summary["measurements"]["names"]
        assert {QuPath.class_prob_measurement(c) for c in CLASSES.names} <= set(names)
        assert QuPath.MODEL_TAG in names
        assert summary["measurements"]["names_with_values_above_2^24"] == []
    assert summaries[1]["cells"]["with_nucleus_roi"] == runs[1].n_nuclei
    assert shapely.is_valid(gpd.read_parquet(runs[1].parquet).geometry.to_numpy()).all()
