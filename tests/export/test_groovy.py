"""The QuPath import script's assumptions, checked against the exporter and the cohort naming."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.export.qupath import write_qupath_geojson
from wsi_stnuc.formats import QuPath
from wsi_stnuc.inference.cohort import SLIDE_SUFFIXES, collect_slides
from wsi_stnuc.inference.identity import UNSAFE_CHARS
from wsi_stnuc.inference.infer import SlideResult, slide_outputs
from wsi_stnuc.slide.registry import IMAGE_SUFFIXES, ZARR_SUFFIXES

SCRIPT = Path(__file__).parents[2] / "groovy" / "import_wsi_stnuc.groovy"


def _setting(name: str) -> str:
    """The literal assigned by ``def NAME = ...`` (a list, a /regex/ or a 'string')."""
    text = SCRIPT.read_text()
    start = text.find(f"\ndef {name} = ")
    assert start >= 0, f"setting {name} not found in {SCRIPT.name}"
    rest = text[start + len(f"\ndef {name} = ") :]
    if rest.startswith("["):  # a Groovy list literal may span lines
        return rest[: rest.index("]") + 1]
    match = re.match(r"/.*?/(?=\s)|'[^']*'", rest)
    assert match, f"cannot parse the value of {name}"
    return match.group(0)


def _groovy_list(name: str) -> list[str]:
    return ast.literal_eval(_setting(name))


def _groovy_regex(name: str) -> str:
    text = _setting(name)
    assert text.startswith("/") and text.endswith("/")
    return text[1:-1]


def groovy_safe_name(image_name: str) -> str:
    """The script's safeName, step by step, with the script's own constants."""
    name = image_name.split(" - ")[0] if " - " in image_name[1:] else image_name
    for suffix in _groovy_list("SLIDE_SUFFIXES"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(_groovy_regex("UNSAFE"), "_", name)
    name = re.sub(r"^[._-]+|[._-]+$", "", name)
    return re.sub(_groovy_regex("DOTS"), ".", name) or "slide"


def test_constants_match_the_python_side():
    assert ast.literal_eval(_setting("MODEL_TAG")) == QuPath.MODEL_TAG
    assert _groovy_regex("UNSAFE") == UNSAFE_CHARS.pattern
    outs = slide_outputs(Path("o"), "NAME")
    suffixes = _groovy_list("RESULT_SUFFIXES")
    assert {"NAME" + s for s in suffixes} == {outs["geojson"].name, outs["geojson_zip"].name}
    assert "NAME" + ast.literal_eval(_setting("SUMMARY_SUFFIX")) == outs["summary"].name
    slide_suffixes = _groovy_list("SLIDE_SUFFIXES")
    # plain images (PNG/JPEG, issue 12) are cohort inputs the script does not strip yet
    pyramids = set(SLIDE_SUFFIXES + ZARR_SUFFIXES) - set(IMAGE_SUFFIXES)
    assert set(slide_suffixes) >= pyramids
    # longest first, so ".ome.tif" is stripped before ".tif"
    for i, s in enumerate(slide_suffixes):
        assert not any(s.endswith(t) for t in slide_suffixes[:i])
    # the summary fields the script reads exist
    assert {"classes"} <= set(SlideResult.__dataclass_fields__)


@pytest.mark.parametrize(
    "filename",
    ["case 01.svs", "A.B.ome.tiff", "x..y.ndpi", "_lead (1).tif", "slide.mrxs", "é-ü.tiff"],
)
def test_script_finds_the_files_the_cohort_writes(tmp_path, filename):
    path = tmp_path / filename
    path.write_bytes(b"")
    (job,) = collect_slides([path])
    # cohort names are STEM-HASH (issue 12): the script's safeName gives the STEM; the hash
    # comes from the slide's path, which manifest.csv maps to the name (the script's part)
    stem = job.name.rsplit("-", 1)[0]
    assert groovy_safe_name(filename) == stem
    assert groovy_safe_name(filename + " - Series 1") == stem


def test_script_uses_the_exporter_contract(tmp_path):
    text = SCRIPT.read_text()
    for call in ("PathIO.readObjects", "addObjects", "removeObjects", "saveImageData",
                 "getImageList", "readImageData", "PathClass.fromString", "getMeasurements"):  # fmt: skip
        assert call in text
    assert "QuPath script -p" in text and "--save" in text and "Run for project" in text
    # what the script keys on is in every exported feature: the tag as a measurement
    gdf = gpd.GeoDataFrame(
        {"class_name": ["a", "b"], QuPath.MODEL_TAG: [123456, 123456], "v": [1.0, np.nan]},
        geometry=shapely.buffer(shapely.points([[5, 5], [20, 20]]), 3),
    )
    path = write_qupath_geojson(gdf, tmp_path / "s.geojson")
    for feature in json.loads(path.read_text())["features"]:
        assert feature["properties"][QuPath.MEASUREMENTS][QuPath.MODEL_TAG] == 123456
        assert "type" not in feature["properties"]
