"""Readers of real annotated H&E (CoNSeP, MoNuSeg): shapes, classes, sources, XML parsing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import shapely

from wsi_stnuc.errors import InputError
from wsi_stnuc.evaluation.annotated import (
    load_consep,
    load_monuseg,
    read_monuseg_xml,
    source_of_patch,
)

XML = """<Annotations MicronsPerPixel="0.2527"><Annotation><Regions>
<Region Id="1"><Vertices><Vertex X="2" Y="2"/><Vertex X="6" Y="2"/><Vertex X="6" Y="5"/>
<Vertex X="2" Y="5"/></Vertices></Region>
<Region Id="2"><Vertices><Vertex X="10" Y="1"/><Vertex X="12" Y="1"/></Vertices></Region>
<Region Id="3"><Vertices><Vertex X="10" Y="10"/><Vertex X="14" Y="14"/><Vertex X="14" Y="10"/>
<Vertex X="10" Y="14"/></Vertices></Region>
</Regions></Annotation></Annotations>"""


def test_source_of_patch():
    assert source_of_patch("train_10_003") == "train_10"
    assert source_of_patch("TCGA-21-5784-01Z-00-DX1") == "TCGA-21-5784-01Z-00-DX1"


def test_read_xml_polygons_and_raster(tmp_path):
    path = tmp_path / "a.xml.gz"
    path.write_bytes(gzip.compress(XML.encode()))
    polys = read_monuseg_xml(path)
    assert len(polys) == 2  # the 2-vertex region is skipped
    assert all(p.is_valid for p in polys)
    assert polys[0].equals(shapely.box(2.5, 2.5, 6.5, 5.5))  # pixel indices -> pixel-corner frame
    inst = read_monuseg_xml(path, shape=(16, 16))
    assert inst.dtype == np.int32 and set(np.unique(inst)) == {0, 1, 2}
    assert (inst[2:6, 2:7] == 1).all() and inst[1, 1] == 0
    # the bow-tie region 3 is repaired, not dropped
    assert polys[1].area > 0


def test_bad_xml_is_input_error(tmp_path):
    bad = tmp_path / "b.xml"
    bad.write_text("<Annotations><Region>")
    with pytest.raises(InputError, match="b.xml"):
        read_monuseg_xml(bad)
    with pytest.raises(InputError, match="not found"):
        load_consep(tmp_path / "nope")


@pytest.mark.realdata
def test_consep_real(data_dir):
    folder = data_dir / "nuclei" / "consep_train"
    if not folder.is_dir():
        pytest.skip("CoNSeP subset absent")
    names = ["train_10_000", "train_1_005"]
    images = load_consep(folder, names)
    assert [im.source_image for im in images] == ["train_10", "train_1"]
    for im in images:
        assert im.rgb.shape == (256, 256, 3) and im.rgb.dtype == np.uint8
        assert im.inst.dtype == np.int32 and im.inst.shape == (256, 256)
        ids = im.instance_ids()
        assert len(im.inst_class) == im.n_instances + 1
        names_ = im.class_names_of(ids)
        assert set(names_) <= {"other", "inflammatory", "epithelial", "spindle"}
        assert im.mpp == pytest.approx(0.25)
    # epithelial nuclei are larger than inflammatory ones in the real annotations
    areas = {"epithelial": [], "inflammatory": []}
    for im in load_consep(folder, [f"train_{i}_00{j}" for i in (1, 2, 3) for j in range(4)]):
        ids = im.instance_ids()
        sizes = np.bincount(im.inst.ravel())[ids]
        for cls in areas:
            areas[cls].extend(sizes[im.class_names_of(ids) == cls])
    assert np.median(areas["epithelial"]) > 1.3 * np.median(areas["inflammatory"])


@pytest.mark.realdata
def test_monuseg_real(data_dir):
    folder = data_dir / "nuclei" / "monuseg_train"
    if not folder.is_dir():
        pytest.skip("MoNuSeg subset absent")
    name = "TCGA-21-5784-01Z-00-DX1"
    (im,) = load_monuseg(folder, [name])
    assert im.rgb.shape == (1000, 1000, 3) and im.inst_class is None
    assert im.mpp == pytest.approx(0.2527)
    polys = read_monuseg_xml(folder / "annotations" / f"{name}.xml.gz")
    assert 300 < len(polys) <= im.n_instances
    # the polygons lie on the rasterised instances
    cen = shapely.get_coordinates(shapely.centroid(np.asarray(polys, dtype=object)))
    hit = im.inst[cen[:, 1].astype(int), cen[:, 0].astype(int)] > 0
    assert hit.mean() > 0.95
    with pytest.raises(InputError, match="not found"):
        load_monuseg(folder, ["no_such_image"])
