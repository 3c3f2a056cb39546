"""Whole-slide inference with an oracle segmenter on synthetic slides of known nuclei."""

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
from wsi_stnuc.export.geoparquet import read_geoparquet_metadata
from wsi_stnuc.export.qupath import read_qupath_geojson
from wsi_stnuc.formats import NucleusCols, QuPath
from wsi_stnuc.inference.infer import Segmenter, infer_slide, slide_outputs
from wsi_stnuc.inference.stitch import label_centroids
from wsi_stnuc.slide.write import write_pyramidal_tiff

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])
BACKGROUND = (235, 215, 225)
COLORS = {1: (70, 30, 130), 2: (130, 20, 40)}  # dark purple / dark red: classes 1, 2


def synthetic_slide(path: Path, size=(520, 430), mpp=0.5, seed=0) -> tuple[Path, np.ndarray]:
    """A lossless slide of separated discs; returns the path and the discs (x, y, r, class)."""
    rng = np.random.default_rng(seed)
    width, height = size
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:height, :width]
    occupied = np.zeros((height, width), bool)
    discs = []
    # some centred exactly on multiples of 64 (tile-core lines for core=64 at the slide mpp)
    centres = [(64.0, 64.0), (128.0, 200.0), (192.0, 128.0)]
    centres += [tuple(rng.uniform(8, (width - 8, height - 8))) for _ in range(200)]
    for k, (cx, cy) in enumerate(centres):
        r = 6.0 if k < 3 else rng.uniform(3.5, 7.0)
        disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r
        if (ndi.binary_dilation(disc, iterations=2) & occupied).any():
            continue
        cls = 1 + k % 2
        img[disc] = COLORS[cls]
        occupied |= disc
        discs.append((cx, cy, r, cls))
    write_pyramidal_tiff(path, img, mpp, tile=128, compression="zlib")
    return path, np.array(discs)


def oracle_forward(images: np.ndarray) -> list[tuple[np.ndarray, pd.DataFrame]]:
    """A perfect "model": dark pixels are nuclei, red ones class 2, the rest class 1."""
    out = []
    for img in images:
        inst, n = ndi.label(img.astype(np.int32).sum(-1) < 3 * 128)
        labels = np.arange(1, n + 1)
        c = label_centroids(inst, labels)
        red = ndi.mean(img[..., 0] > img[..., 2], inst, labels) > 0.5 if n else np.zeros(0)
        out.append(
            (
                inst.astype(np.int32),
                pd.DataFrame(
                    {
                        "label": labels,
                        "class_id": np.where(red, 2, 1),
                        "det_prob": np.ones(n),
                        "centroid_x": c[:, 0],
                        "centroid_y": c[:, 1],
                    }
                ),
            )  # fmt: skip
        )
    return out


# the discs are at most 7 px (3.5 µm) in radius, 38 µm²: a 40 µm² guard lets the tests use
# halos of 16 px at the oracle's 0.5 µm/px
ORACLE_MAX_AREA_UM2 = 40.0


def oracle(mpp: float = 0.5, forward=oracle_forward) -> Segmenter:
    return Segmenter(forward, mpp, CLASSES, identity={"name": "oracle"},
                     max_area_um2=ORACLE_MAX_AREA_UM2)  # fmt: skip


class Crash(BaseException):
    """Stands for a kill: not an ``Exception``, so the parts stay for ``resume``."""


def crashing(after_tiles: int):
    seen = [0]

    def forward(images):
        seen[0] += len(images)
        if seen[0] > after_tiles:
            raise Crash(f"killed after {after_tiles} tiles")
        return oracle_forward(images)

    return forward


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("slide") / "syn.tif")


def _run(model, slide_path, out, **kw):
    kw = {"core": 64, "halo": 24, "batch_size": 4, "tissue": False, "workers": 2,
          "progress": False, **kw}  # fmt: skip
    return infer_slide(model, slide_path, out, **kw)


def test_oracle_finds_every_nucleus_once(slide, tmp_path):
    path, discs = slide
    res = _run(oracle(), path, tmp_path)
    table = gpd.read_parquet(res.parquet)
    assert res.n_nuclei == len(table) == len(discs)
    assert table[NucleusCols.NUCLEUS_ID].tolist() == list(range(1, len(discs) + 1))
    # each disc found exactly once, at its centre, with its class
    c = table[[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y]].to_numpy()
    d = np.linalg.norm(c[:, None] - discs[None, :, :2], axis=2)
    match = d.argmin(axis=1)
    assert len(set(match)) == len(discs)
    assert d.min(axis=1).max() < 0.6
    names = np.array(CLASSES.names)[discs[match, 3].astype(int) - 1]
    assert (table[NucleusCols.CLASS_NAME].to_numpy() == names).all()
    assert res.class_counts == dict(table[NucleusCols.CLASS_NAME].value_counts().sort_index())
    # features are physical: area in µm² close to the disc's (0.5 µm/px)
    area = np.pi * discs[match, 2] ** 2 * 0.25
    np.testing.assert_allclose(table[NucleusCols.AREA_UM2], area, rtol=0.25)
    # purple nuclei are hematoxylin-rich, dark red ones eosin-rich
    purple = table[NucleusCols.CLASS_NAME] == CLASSES.names[0]
    h, e = table[NucleusCols.MEAN_H_OD], table[NucleusCols.MEAN_E_OD]
    assert (h[purple] > e[purple]).all() and (e[~purple] > h[~purple]).all()
    assert shapely.is_valid(table.geometry.to_numpy()).all()
    meta = read_geoparquet_metadata(res.parquet)
    assert meta["model"]["name"] == "oracle"
    assert meta["classes"] == CLASSES.to_dict()
    assert meta["slide"]["mpp"] == [0.5, 0.5]
    assert res.tissue_area_mm2 == pytest.approx(520 * 430 * 0.25 / 1e6)
    qp = read_qupath_geojson(res.geojson)
    assert len(qp) == len(table) and len(set(qp["id"])) == len(table)
    assert (qp[QuPath.MODEL_TAG] == res.model_tag).all()  # the Groovy import keys on it
    assert not slide_outputs(tmp_path, "syn")["parts"].exists()
    assert not list(tmp_path.rglob("*.partial"))


def test_tiling_does_not_change_the_result(slide, tmp_path):
    path, _ = slide
    a = gpd.read_parquet(_run(oracle(), path, tmp_path / "a", core=64, halo=24).parquet)
    b = gpd.read_parquet(_run(oracle(), path, tmp_path / "b", core=100, halo=16).parquet)
    key = [NucleusCols.CENTROID_Y, NucleusCols.CENTROID_X]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(a[key], b[key], atol=1e-9)
    assert shapely.equals_exact(a.geometry.to_numpy(), b.geometry.to_numpy(), 1e-9).all()


def test_reading_in_processes_gives_the_same_output(slide, tmp_path):
    """Tiles decoded in spawned processes (outside the interpreter lock) give byte-identical
    results; an unknown reader is refused before any work."""
    path, _ = slide
    threads = _run(oracle(), path, tmp_path / "t")
    procs = _run(oracle(), path, tmp_path / "p", reader="processes")
    a, b = gpd.read_parquet(threads.parquet), gpd.read_parquet(procs.parquet)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    assert shapely.equals_exact(a.geometry.to_numpy(), b.geometry.to_numpy(), 0).all()
    with pytest.raises(ValueError, match="reader"):
        _run(oracle(), path, tmp_path / "x", reader="gpu")
    assert not (tmp_path / "x").exists()


def test_reading_in_processes_falls_back_to_threads_in_a_daemon(monkeypatch, caplog):
    import multiprocessing
    from types import SimpleNamespace

    from wsi_stnuc.inference.infer import _reader_scheduler

    assert _reader_scheduler("processes") == "processes"
    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    assert _reader_scheduler("processes") == "threads" and "daemonic" in caplog.text


def test_resume_after_kill_is_identical(slide, tmp_path):
    path, _ = slide
    full = _run(oracle(), path, tmp_path / "full")
    with pytest.raises(Crash):
        _run(oracle(forward=crashing(after_tiles=21)), path, tmp_path / "resumed")
    parts = slide_outputs(tmp_path / "resumed", "syn")["parts"]
    n_done = len(list(parts.glob("batch-*.parquet")))
    assert 0 < n_done < full.n_tiles // 4
    assert not (tmp_path / "resumed" / "syn.parquet").exists()
    from wsi_stnuc.inference.infer import _done_parts

    _, before = _done_parts(parts)
    assert before > 0  # the killed run's time travels with its parts
    calls = []

    def counting(images):
        calls.append(len(images))
        return oracle_forward(images)

    resumed = _run(oracle(forward=counting), path, tmp_path / "resumed")
    assert sum(calls) == full.n_tiles - 4 * n_done  # done batches were not recomputed
    assert resumed.n_nuclei == full.n_nuclei
    a, b = gpd.read_parquet(full.parquet), gpd.read_parquet(resumed.parquet)
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    assert shapely.equals_exact(a.geometry.to_numpy(), b.geometry.to_numpy(), 0).all()
    assert Path(full.geojson).read_bytes() == Path(resumed.geojson).read_bytes()
    assert resumed.seconds >= before  # counts the killed run too, not only the resumed part
    # a finished slide is skipped on the next resume
    calls.clear()
    again = _run(oracle(forward=counting), path, tmp_path / "resumed")
    assert calls == [] and again.n_nuclei == full.n_nuclei


def test_changed_settings_restart(slide, tmp_path):
    path, _ = slide
    with pytest.raises(Crash):
        _run(oracle(forward=crashing(after_tiles=9)), path, tmp_path)
    calls = []

    def counting(images):
        calls.append(len(images))
        return oracle_forward(images)

    res = _run(oracle(forward=counting), path, tmp_path, halo=20)  # other halo: start over
    assert sum(calls) == res.n_tiles


def test_scaled_model_and_cells_zip(slide, tmp_path):
    path, discs = slide
    # model at 1 µm/px on a 0.5 µm/px slide: coordinates must come back in level-0 pixels
    res = _run(oracle(mpp=1.0), path, tmp_path, core=40, halo=12, qupath_zip=True,
               qupath_cells=True)  # fmt: skip
    table = gpd.read_parquet(res.parquet)
    assert abs(len(table) - len(discs)) <= 2  # tiny discs may merge or vanish at half size
    c = table[[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y]].to_numpy()
    d = np.linalg.norm(c[:, None] - discs[None, :, :2], axis=2).min(axis=1)
    assert np.median(d) < 1.0
    assert res.geojson.endswith(".geojson.zip")
    cells = read_qupath_geojson(res.geojson)
    assert (cells["objectType"] == "cell").all()
    cell_polys = cells.geometry.to_numpy()
    nuclei = cells["nucleus_geometry"].to_numpy()
    assert shapely.covers(shapely.buffer(cell_polys, 0.05), nuclei).all()
    # cells do not overlap each other (beyond rounding)
    tree = shapely.STRtree(cell_polys)
    i, j = tree.query(cell_polys, predicate="intersects")
    pairs = i < j
    overlap = shapely.area(shapely.intersection(cell_polys[i[pairs]], cell_polys[j[pairs]]))
    assert (overlap < 1.0).all()


def test_summary_json(slide, tmp_path):
    path, _ = slide
    res = _run(oracle(), path, tmp_path, qupath=False)
    summary = json.loads(slide_outputs(tmp_path, "syn")["summary"].read_text())
    assert summary["n_nuclei"] == res.n_nuclei and summary["geojson"] is None
    assert not list(tmp_path.glob("*.geojson*"))


def test_blank_slide_with_tissue_detection(tmp_path):
    rgb = np.full((300, 260, 3), 245, np.uint8)
    path = write_pyramidal_tiff(tmp_path / "blank.tif", rgb, 0.5, tile=128, compression="zlib")
    res = _run(oracle(), path, tmp_path / "out", tissue=True)
    assert res.n_nuclei == 0 and res.n_tiles == 0 and res.tissue_area_mm2 == 0
    table = gpd.read_parquet(res.parquet)
    assert len(table) == 0 and NucleusCols.CLASS_NAME in table.columns
    assert read_qupath_geojson(res.geojson).empty


def test_plain_callable_model(slide, tmp_path):
    path, discs = slide

    def model(images):
        return oracle_forward(images)

    model.mpp, model.classes, model.max_area_um2 = 0.5, CLASSES, ORACLE_MAX_AREA_UM2
    assert _run(model, path, tmp_path).n_nuclei == len(discs)
    with pytest.raises(TypeError, match="mpp"):
        _run(oracle_forward, path, tmp_path / "x")


def test_a_name_holding_another_slides_results_is_refused(slide, tmp_path):
    from wsi_stnuc.errors import InputError

    path, _ = slide
    other = tmp_path / "other.tif"
    other.write_bytes(path.read_bytes())
    _run(oracle(), path, tmp_path / "out", name="x", qupath=False)
    with pytest.raises(InputError, match="already holds the results of"):
        _run(oracle(), other, tmp_path / "out", name="x", qupath=False)
    assert json.loads((tmp_path / "out" / "x.summary.json").read_text())["slide_path"] == str(
        path.resolve()
    )
