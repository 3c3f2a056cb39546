"""Loading nuclei from every supported format, and evaluate() choosing raster/polygon matching."""

from __future__ import annotations

import gzip
import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.evaluation.eval_io import (
    evaluate,
    evaluate_set,
    load_instances,
    pair_files,
    rasterize_polygons,
    to_raster,
)
from wsi_stnuc.export.geoparquet import write_geoparquet
from wsi_stnuc.export.qupath import write_qupath_geojson

BOXES = [(2, 2, 8, 8), (12, 3, 18, 9), (4, 12, 10, 19)]  # x0, y0, x1, y1 in px


def _gdf(boxes=BOXES, classes=("epi", "inf", "epi")) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"class_name": list(classes)}, geometry=[shapely.box(*b) for b in boxes]
    )


def _label_image(shape=(24, 24)) -> np.ndarray:
    inst = np.zeros(shape, np.int32)
    for k, (x0, y0, x1, y1) in enumerate(BOXES, start=1):
        inst[y0:y1, x0:x1] = k
    return inst


def test_rasterize_matches_pixel_centres():
    ring = shapely.box(2, 2, 8, 8).difference(shapely.box(4, 4, 6, 6))
    lab = rasterize_polygons([shapely.box(2, 2, 8, 8), ring], (10, 10))
    # second polygon (a frame with a hole) overwrites the first; the hole keeps id 1
    assert (lab[2:8, 2:8] > 0).all() and lab.sum() == 32 * 2 + 4 * 1
    assert (rasterize_polygons(_gdf().geometry.values, (24, 24)) == _label_image()).all()


def test_geoparquet_with_metadata(tmp_path):
    path = tmp_path / "nuclei.parquet"
    classes = ClassTable.from_names(["epi", "inf"])
    meta = {"slide": {"mpp": [0.5, 0.5]}, "classes": classes.to_dict()}
    write_geoparquet(_gdf(), path, metadata=meta)
    inst = load_instances(path)
    assert not inst.is_raster and len(inst) == 3
    assert inst.mpp == 0.5 and inst.class_column == "class_name"
    assert inst.classes.names == ("epi", "inf")
    assert load_instances(path, mpp=0.25).mpp == 0.25
    ras = load_instances(path, shape=(24, 24))
    assert (ras.inst == _label_image()).all()
    assert ras.inst_class.tolist() == [1, 2, 1]  # names -> ids through the class table
    with pytest.raises(InputError, match="no class column"):
        load_instances(path, class_column="nope")


def test_geojson_feature_collection_and_plain_list(tmp_path):
    fc = tmp_path / "n.geojson"
    write_qupath_geojson(_gdf(), fc)
    inst = load_instances(fc)
    assert len(inst) == 3 and inst.class_column == "class_name"
    plain = tmp_path / "plain.json"
    features = [
        {"type": "Feature", "geometry": shapely.geometry.mapping(shapely.box(*b)), "properties": {}}
        for b in BOXES
    ]
    plain.write_text(json.dumps(features))
    assert len(load_instances(plain)) == 3


def test_qupath_cells_use_the_nucleus(tmp_path):
    cells = _gdf()
    cells["nucleus"] = gpd.GeoSeries(cells.geometry.scale(0.5, 0.5))
    cells = cells.set_geometry(cells.geometry.buffer(3))
    path = tmp_path / "cells.geojson"
    write_qupath_geojson(cells, path, nucleus_geometry_column="nucleus")
    got = load_instances(path)
    # boxes of 6 x 6 (6 x 7 for the third) halved: 9, 9, 10.5 px^2
    assert got.polygons.area.tolist() == pytest.approx([9.0, 9.0, 10.5])


def test_label_images(tmp_path):
    import tifffile
    from PIL import Image

    lab = _label_image()
    tif = tmp_path / "l.tif"
    # 40000 px/cm = 0.25 µm/px
    tifffile.imwrite(tif, lab, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    got = load_instances(tif)
    assert got.is_raster and (got.inst == lab).all() and got.mpp == pytest.approx(0.25)
    png = tmp_path / "l.png"
    Image.fromarray(lab.astype(np.uint16)).save(png)
    assert (load_instances(png).inst == lab).all()
    npz = tmp_path / "l.npz"
    np.savez(npz, inst=lab.astype(np.uint16), inst_type=np.array([[3], [2], [3]], np.uint8))
    got = load_instances(npz)
    assert got.inst_class.tolist() == [3, 2, 3]
    bad = tmp_path / "rgb.npy"
    np.save(bad, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="2-D integer"):
        load_instances(bad)
    short = tmp_path / "short.npz"
    np.savez(short, inst=lab, inst_type=np.array([1]))
    with pytest.raises(InputError, match="inst_type"):
        load_instances(short)


def _xml(boxes) -> str:
    regions = "".join(
        "<Region><Vertices>"
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        + "</Vertices></Region>"
        for x0, y0, x1, y1 in boxes
    )
    degenerate = '<Region><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/></Vertices></Region>'
    body = f"<Annotation><Regions>{regions}{degenerate}</Regions></Annotation>"
    return f'<Annotations MicronsPerPixel="0.2527">{body}</Annotations>'


def test_monuseg_xml(tmp_path):
    plain = tmp_path / "a.xml"
    # MoNuSeg vertices are pixel indices (centres): the box of pixels x0..x1-1 has its vertices
    # at x0 and x1 - 1.
    boxes = [(x0, y0, x1 - 1, y1 - 1) for x0, y0, x1, y1 in BOXES]
    plain.write_text(_xml(boxes))
    gz = tmp_path / "a.xml.gz"
    gz.write_bytes(gzip.compress(_xml(boxes).encode()))
    for path in (plain, gz):
        inst = load_instances(path, shape=(24, 24))
        assert (inst.inst == _label_image()).all()  # the 2-vertex region is skipped
        assert inst.mpp == pytest.approx(0.2527)
    broken = tmp_path / "b.xml"
    broken.write_text("<Annotations><Region>")
    with pytest.raises(InputError, match="XML"):
        load_instances(broken)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_instances(tmp_path / "none.parquet")
    odd = tmp_path / "x.csv"
    odd.write_text("a,b\n")
    with pytest.raises(InputError, match="unknown nucleus file type"):
        load_instances(odd)


def test_evaluate_modes_agree(tmp_path):
    classes = ClassTable.from_names(["epi", "inf"])
    pq_path = tmp_path / "ref.parquet"
    write_geoparquet(_gdf(), pq_path, metadata={"classes": classes.to_dict()})
    ref_poly = load_instances(pq_path)
    # prediction: the first box shrunk by one column, the third missing, one false positive
    pred_gdf = _gdf([(2, 2, 7, 8), (12, 3, 18, 9), (20, 20, 23, 23)], ("epi", "epi", "inf"))
    pred_path = tmp_path / "pred.parquet"
    write_geoparquet(pred_gdf, pred_path, metadata={"classes": classes.to_dict()})
    pred_poly = load_instances(pred_path)
    poly = evaluate(pred_poly, ref_poly, mpp=0.5)
    assert poly["mode"] == "polygon"
    # by hand: matches (IoU 30/36, 1) -> TP 2, FP 1, FN 1; SQ = (5/6 + 1) / 2; DQ = 2/3
    assert (poly["tp"], poly["fp"], poly["fn"]) == (2, 1, 1)
    assert poly["pq"] == pytest.approx(2 / 3 * (5 / 6 + 1) / 2)
    assert poly["f1c"]["epi"] == pytest.approx(2 / (2 + 2 + 1))  # TP 1, FP_c 1 (inf->epi), FN_d 1
    ref_ras = load_instances(pq_path, shape=(24, 24))
    mixed = evaluate(pred_poly, ref_ras, mpp=0.5)
    assert mixed["mode"] == "raster"
    for key in ("pq", "aji", "dice", "f1d"):
        assert mixed[key] == pytest.approx(poly[key]), key
    assert mixed["f1c"][1] == pytest.approx(poly["f1c"]["epi"])
    with pytest.raises(InputError, match="pixel size"):
        evaluate(pred_poly, ref_poly)


def test_pair_files_and_evaluate_set(tmp_path):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir()
    refs.mkdir()
    lab = _label_image()
    half = lab.copy()
    half[lab == 3] = 0
    np.save(refs / "a.npy", lab)
    np.save(refs / "b.npy", lab)
    np.save(preds / "a.npy", lab)
    np.savez(preds / "b.npz", inst=half)  # other suffix, same name
    np.save(preds / "extra.npy", lab)
    pairs = pair_files(preds, refs)
    assert [(p.name, r.name) for p, r in pairs] == [("a.npy", "a.npy"), ("b.npz", "b.npy")]
    loaded = [(load_instances(p), load_instances(r)) for p, r in pairs]
    res = evaluate_set(loaded, mpp=0.5)
    assert [row["pq"] for row in res["images"]] == [1.0, pytest.approx(1 / 1.25)]
    assert res["summary"]["pq"] == pytest.approx((1.0 + 1 / 1.25) / 2)
    assert res["summary"]["fn"] == 1 and res["summary"]["n_images"] == 2
    (refs / "c.npy").write_bytes((refs / "a.npy").read_bytes())
    with pytest.raises(InputError, match="no prediction"):
        pair_files(preds, refs)


def require(path):
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


@pytest.mark.realdata
def test_real_monuseg_and_consep(data_dir):
    ann = data_dir / "nuclei" / "monuseg_train" / "annotations"
    xml = require(next(iter(sorted(ann.glob("*.xml.gz"))), ann / "missing.xml.gz"))
    poly = load_instances(xml, mpp=0.25)
    assert len(poly) > 100
    ras = to_raster(poly, (1000, 1000))
    r = evaluate(poly, ras)
    assert r["pq"] > 0.95 and r["f1d"] > 0.99  # rasterising loses only sub-pixel slivers
    npz = require(data_dir / "nuclei" / "consep_train" / "labels" / "train_1_000.npz")
    con = load_instances(npz, mpp=0.25)
    assert evaluate(con, con)["pq"] == 1.0 and evaluate(con, con)["f1c"]


def test_polygons_outside_a_label_image_are_reported(tmp_path, caplog):
    """Predictions rasterised onto a reference image lose what lies outside it: a few are a
    warning, most are refused (slide-wide predictions against one ROI's labels)."""
    ref_path = tmp_path / "ref.npy"
    np.save(ref_path, _label_image())
    ref = load_instances(ref_path, mpp=0.5)
    pred_path = tmp_path / "pred.parquet"
    write_geoparquet(_gdf(BOXES + [(100, 100, 106, 106)], ("epi",) * 4), pred_path,
                     metadata={"slide": {"mpp": [0.5, 0.5]}})  # fmt: skip
    res = evaluate(load_instances(pred_path), ref)
    assert "1 of 4 polygons lie outside the 24 x 24 px label image" in caplog.text
    assert res["tp"] == 3
    far = [(x + 500, y, x1 + 500, y1) for x, y, x1, y1 in BOXES]
    write_geoparquet(_gdf(far), pred_path, metadata={"slide": {"mpp": [0.5, 0.5]}})
    with pytest.raises(InputError, match="3 of 3 polygons lie outside"):
        evaluate(load_instances(pred_path), ref)
