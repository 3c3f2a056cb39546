"""The QuPath import script compiles with only what QuPath bundles (the Groovy modules groovy,
groovy-jsr223 and groovy-xml, plus qupath-core), and its import logic works on real qupath-core
objects: results found by the recorded slide path, duplicate slide names, class colours, model
tag, rerun replaces.

Groovy comes from Debian's ``groovy`` package (``/usr/share/groovy/lib`` or
``$WSI_STNUC_GROOVY_LIB``), qupath-core from the jars of QuPath's reader (``qupath_check``);
tests skip where either, or a new enough Java, is missing (the ``groovy`` fixture,
``tests/conftest.py``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.formats import QuPath
from wsi_stnuc.inference.cohort import run_cohort
from wsi_stnuc.inference.infer import Segmenter, SlideResult, slide_outputs
from wsi_stnuc.slide.write import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "groovy").glob("*.groovy"))
SCRIPT = REPO / "groovy" / "import_wsi_stnuc.groovy"
DRIVER = Path(__file__).parent / "groovy" / "run_import.groovy"
CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def test_every_script_compiles_with_only_what_qupath_bundles(groovy, tmp_path):
    res = groovy("org.codehaus.groovy.tools.FileSystemCompiler", "-d", str(tmp_path / "classes"),
                 *map(str, SCRIPTS))  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "classes" / "WsiStnucImport.class").is_file()
    # the class path is as strict as QuPath's: groovy-json is not on it
    bad = tmp_path / "bad.groovy"
    bad.write_text("import groovy.json.JsonSlurper\nprintln new JsonSlurper()\n")
    res = groovy("org.codehaus.groovy.tools.FileSystemCompiler", "-d", str(tmp_path), str(bad))
    assert "unable to resolve class groovy.json.JsonSlurper" in res.stdout + res.stderr


def _oracle_forward():
    """test_infer's perfect "model" (dark pixels are nuclei, red ones class 2), loaded like
    the other test modules load it."""
    import importlib.util

    path = Path(__file__).parents[1] / "inference" / "test_infer.py"
    spec = importlib.util.spec_from_file_location("_infer_test_helpers_groovy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle_forward


_forward = _oracle_forward()


def _slide(path: Path, seed: int, n: int) -> Path:
    rng = np.random.default_rng(seed)
    img = np.full((160, 160, 3), (235, 215, 225), np.uint8)
    yy, xx = np.mgrid[:160, :160]
    for k, (cx, cy) in enumerate(rng.uniform(12, 148, (n, 2))):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 16] = (70, 30, 130) if k % 2 else (130, 20, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(path, img, 0.5, tile=128, compression="zlib")
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three slides, two with the same file name in different folders, through `infer`."""
    root = tmp_path_factory.mktemp("cohort")
    slides = [_slide(root / "a" / "slide.tif", 0, 6), _slide(root / "b" / "slide.tif", 1, 9),
              _slide(root / "c" / "solo.tif", 2, 4)]  # fmt: skip
    out = root / "results"
    seg = Segmenter(_forward, 0.5, CLASSES, identity={"name": "oracle"})
    run = run_cohort([str(s) for s in slides], seg, out, progress=False, core=64, halo=16,
                     max_area_um2=40, batch_size=4, tissue=False, workers=1)  # fmt: skip
    assert run.n_failed == 0
    other = Segmenter(_forward, 0.5, CLASSES, identity={"name": "another model"})
    again = run_cohort([str(slides[0])], other, root / "other", progress=False, core=64,
                       halo=16, max_area_um2=40, tissue=False, workers=1)  # fmt: skip
    (root / "link").symlink_to(root / "b")
    # Rows by folder of their slide: names are STEM-HASH, the same stem in a/ and b/.
    rows = {Path(r["path"]).parent.name: r for r in run.rows}
    rows["other"] = again.rows[0]
    return root, out, rows


def _ids(result_geojson: str) -> list[str]:
    from wsi_stnuc.export.qupath import read_qupath_geojson

    return sorted(read_qupath_geojson(result_geojson)["id"])


def test_import_logic_on_qupath_core(groovy, cohort, tmp_path):
    root, out, rows = cohort
    assert rows["a"]["name"] != rows["b"]["name"]  # same file name, other folders
    images = [
        {"name": "slide.tif", "paths": [str(root / "a" / "slide.tif")], "runs": 2,
         "existing": rows["other"]["geojson"]},
        {"name": "slide.tif", "paths": [str(root / "link" / "slide.tif")]},  # b/, via a link
        {"name": "solo.tif", "paths": ["/moved/elsewhere/solo.tif"]},  # unique file name
        {"name": "slide.tif", "paths": ["/moved/elsewhere/slide.tif"]},  # ambiguous name
    ]  # fmt: skip
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"images": images}))
    res = groovy("groovy.ui.GroovyMain", str(DRIVER), str(SCRIPT), str(out), str(scenario))
    assert res.returncode == 0, res.stdout + res.stderr
    a, b, solo, ambiguous = json.loads(res.stdout.strip().splitlines()[-1])
    a_row, b_row = rows["a"], rows["b"]
    tag = str(json.loads((out / f"{a_row['name']}.summary.json").read_text())["model_tag"])
    # a/slide.tif gets its own result, and a rerun replaces it; the other model's objects stay
    assert a["ids"] == sorted(_ids(a_row["geojson"]) + _ids(rows["other"]["geojson"]))
    assert a["tags"][tag] == a_row["n_nuclei"]
    assert "replaced 0" in a["lines"][0] and f"replaced {a_row['n_nuclei']}" in a["lines"][1]
    # b/slide.tif, reached through a symbolic link, gets b's result, not a's
    assert b["ids"] == _ids(b_row["geojson"]) and f"{b_row['name']}.geojson" in b["lines"][0]
    assert b["colours"] == {c["name"]: c["color"] for c in CLASSES.to_dict()}
    assert solo["ids"] == _ids(rows["c"]["geojson"])
    assert ambiguous["n_objects"] == 0 and "not guessing" in ambiguous["lines"][0]


def test_constants_match_the_python_side():
    text = SCRIPT.read_text()

    def constant(name: str):
        match = re.search(rf"static final \w+(?:<\w+>)? {name} = (.+)", text)
        assert match, f"{name} not in {SCRIPT.name}"
        return ast.literal_eval(match.group(1).split("//")[0].strip())

    assert constant("MODEL_TAG") == QuPath.MODEL_TAG
    outs = slide_outputs(Path("o"), "NAME")
    assert {"NAME" + s for s in constant("RESULT_SUFFIXES")} == {
        outs["geojson"].name, outs["geojson_zip"].name}  # fmt: skip
    assert "NAME" + constant("SUMMARY_SUFFIX") == outs["summary"].name
    # the summary fields the script reads exist
    assert {"name", "slide_path", "classes"} <= set(SlideResult.__dataclass_fields__)
    assert "groovy.json" not in text and "JsonSlurper" not in text
