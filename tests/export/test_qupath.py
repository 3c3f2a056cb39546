"""QuPath GeoJSON contract and round trip."""

from __future__ import annotations

import json
import uuid
import zipfile

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.export.ids import deterministic_uuids
from wsi_stnuc.export.qupath import read_qupath_geojson, write_qupath_geojson
from wsi_stnuc.formats import NucleusCols, QuPath

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def _nuclei(n: int = 7) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (n, 2)).round(1)
    geoms = shapely.buffer(shapely.points(xy), 4.0, quad_segs=3)
    geoms = shapely.transform(geoms, lambda c: np.round(c, 2))
    names = np.array(["epithelial", "inflammatory", "unknown", None] * n, dtype=object)[:n]
    area = rng.uniform(10, 50, n)
    area[1::5] = np.nan
    return gpd.GeoDataFrame(
        {
            NucleusCols.NUCLEUS_ID: np.arange(1, n + 1, dtype=np.int64),
            NucleusCols.CLASS_ID: np.arange(n) % 3,
            NucleusCols.CLASS_NAME: names,
            NucleusCols.AREA_UM2: area,
            NucleusCols.DET_PROB: rng.uniform(0, 1, n),
        },
        geometry=geoms,
    )


@pytest.mark.parametrize("suffix", [".geojson", ".zip"])
def test_contract(tmp_path, suffix):
    gdf = _nuclei()
    path = write_qupath_geojson(gdf, tmp_path / f"slide{suffix}", classes=CLASSES, chunk_size=3)
    if suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            assert zf.namelist() == ["slide.geojson"]
            doc = json.loads(zf.read("slide.geojson"))
    else:
        doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert len(feats) == len(gdf)
    assert len({f["id"] for f in feats}) == len(gdf)
    for f, (_, row) in zip(feats, gdf.iterrows(), strict=True):
        assert f["type"] == "Feature"
        assert str(uuid.UUID(f["id"])) == f["id"]
        props = f["properties"]
        assert "type" not in props
        assert props[QuPath.OBJECT_TYPE] == QuPath.DETECTION
        assert props[QuPath.IS_LOCKED] is False
        meas = props[QuPath.MEASUREMENTS]
        # ids and class ids are not measurements; NaN is dropped
        assert set(meas) <= {NucleusCols.AREA_UM2, NucleusCols.DET_PROB}
        assert meas[NucleusCols.DET_PROB] == pytest.approx(row[NucleusCols.DET_PROB])
        assert (NucleusCols.AREA_UM2 in meas) == np.isfinite(row[NucleusCols.AREA_UM2])
        name = row[NucleusCols.CLASS_NAME]
        if name is None:
            assert QuPath.CLASSIFICATION not in props
        else:
            assert props[QuPath.CLASSIFICATION] == {
                "name": name,
                "color": list(CLASSES.color_of(name)),
            }
    assert not list(tmp_path.glob("*.partial"))


def test_round_trip(tmp_path):
    gdf = _nuclei(20)
    back = read_qupath_geojson(write_qupath_geojson(gdf, tmp_path / "s.geojson", chunk_size=6))
    assert shapely.equals_exact(back.geometry.to_numpy(), gdf.geometry.to_numpy(), 1e-9).all()
    assert list(back[NucleusCols.CLASS_NAME]) == list(gdf[NucleusCols.CLASS_NAME])
    np.testing.assert_allclose(back[NucleusCols.DET_PROB], gdf[NucleusCols.DET_PROB])
    np.testing.assert_allclose(back[NucleusCols.AREA_UM2], gdf[NucleusCols.AREA_UM2])


def test_ids_are_stable_and_keyed():
    ids = np.arange(1000)
    a = deterministic_uuids("slideA", ids)
    assert (a == deterministic_uuids("slideA", ids)).all()
    assert len(set(a)) == 1000
    b = deterministic_uuids("slideB", ids)
    assert not set(a) & set(b)
    for s in a[:50]:
        u = uuid.UUID(s)
        assert u.version == 8 and u.variant == uuid.RFC_4122


def test_cells_with_nucleus_geometry(tmp_path):
    gdf = _nuclei(4)
    cells = gdf.copy()
    cells["nucleus"] = gdf.geometry
    cells = cells.set_geometry(gdf.geometry.buffer(3.0))
    path = write_qupath_geojson(cells, tmp_path / "c.geojson", nucleus_geometry_column="nucleus")
    feats = json.loads(path.read_text())["features"]
    assert all(f["properties"][QuPath.OBJECT_TYPE] == QuPath.CELL for f in feats)
    assert all(QuPath.NUCLEUS_GEOMETRY in f for f in feats)
    assert all(QuPath.NUCLEUS_GEOMETRY not in f["properties"] for f in feats)
    back = read_qupath_geojson(path)
    nuc = shapely.from_geojson([json.dumps(f[QuPath.NUCLEUS_GEOMETRY]) for f in feats])
    assert shapely.equals_exact(nuc, gdf.geometry.to_numpy(), 1e-9).all()
    assert back.geometry.area.gt(gdf.geometry.area.to_numpy()).all()


def test_empty_and_bad_input(tmp_path):
    empty = _nuclei(0)
    doc = json.loads(write_qupath_geojson(empty, tmp_path / "e.geojson").read_text())
    assert doc == {"type": "FeatureCollection", "features": []}
    with pytest.raises(InputError, match="nope"):
        write_qupath_geojson(_nuclei(2), tmp_path / "x.geojson", class_column="nope")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.geojson"):
        read_qupath_geojson(bad)


def test_streamed_frames_equal_one_frame(tmp_path):
    gdf = _nuclei(30)
    whole = write_qupath_geojson(gdf, tmp_path / "a.geojson", uuid_key="k")
    frames = (gdf.iloc[i : i + 7] for i in range(0, len(gdf), 7))
    streamed = write_qupath_geojson(frames, tmp_path / "b.geojson", uuid_key="k", chunk_size=3)
    # same bytes: colours of classes outside a table do not depend on the chunking
    assert whole.read_bytes() == streamed.read_bytes()


def test_bad_geometry_never_reaches_the_file(tmp_path, caplog):
    gdf = _nuclei(6)
    geoms = gdf.geometry.to_numpy().copy()
    geoms[1] = None
    geoms[2] = shapely.GeometryCollection([geoms[2], shapely.Point(0, 0)])
    geoms[3] = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    gdf = gdf.set_geometry(gpd.GeoSeries(list(geoms)))
    with caplog.at_level("WARNING"):
        path = write_qupath_geojson(gdf, tmp_path / "g.geojson")
    feats = json.loads(path.read_text())["features"]
    assert len(feats) == 5  # the null one is dropped, and counted
    assert {f["geometry"]["type"] for f in feats} <= {"Polygon", "MultiPolygon"}
    back = read_qupath_geojson(path)
    assert back.geometry.is_valid.all()
    assert "repaired 2, dropped 1 (1 null)" in caplog.text


def test_ids_stay_unique_when_chunks_reuse_nucleus_ids(tmp_path, caplog):
    gdf = _nuclei(10)
    frames = [gdf.iloc[:5], gdf.iloc[5:].assign(**{NucleusCols.NUCLEUS_ID: np.arange(1, 6)})]
    with caplog.at_level("WARNING"):
        path = write_qupath_geojson(iter(frames), tmp_path / "d.geojson", uuid_key="k")
    ids = [f["id"] for f in json.loads(path.read_text())["features"]]
    assert len(set(ids)) == 10
    assert "5 repeated or malformed object ids replaced" in caplog.text
    again = write_qupath_geojson(iter(frames), tmp_path / "d2.geojson", uuid_key="k")
    assert [f["id"] for f in json.loads(again.read_text())["features"]] == ids  # deterministic
    # without nucleus ids, rows are numbered through the whole file, not per chunk
    plain = (f.drop(columns=NucleusCols.NUCLEUS_ID) for f in frames)
    path = write_qupath_geojson(plain, tmp_path / "p.geojson", chunk_size=2)
    assert len({f["id"] for f in json.loads(path.read_text())["features"]}) == 10


def test_id_column(tmp_path):
    gdf = _nuclei(4)
    given = [str(uuid.uuid4()) for _ in range(3)]
    gdf["oid"] = [given[0], given[1], given[1].upper(), "not-a-uuid"]
    path = write_qupath_geojson(gdf, tmp_path / "i.geojson", id_column="oid")
    ids = [f["id"] for f in json.loads(path.read_text())["features"]]
    assert ids[:2] == given[:2] and len(set(ids)) == 4
    assert all(str(uuid.UUID(i)) == i for i in ids)


def test_class_probabilities_get_readable_measurement_names(tmp_path):
    gdf = _nuclei(3).assign(prob_epithelial=[0.1, 0.2, 0.3], prob_other=[1.0, 1.0, 1.0])
    path = write_qupath_geojson(gdf, tmp_path / "m.geojson", classes=CLASSES)
    meas = json.loads(path.read_text())["features"][0]["properties"][QuPath.MEASUREMENTS]
    assert meas[QuPath.class_prob_measurement("epithelial")] == 0.1
    assert meas["prob_other"] == 1.0  # not a class of the table: left as it is
