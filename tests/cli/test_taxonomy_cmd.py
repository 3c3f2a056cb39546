from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from wsi_stnuc.classes import ClassTable, Taxonomy
from wsi_stnuc_cli import main as cli_main


@pytest.fixture
def labelled_slide(tmp_path):
    """A 0.5 µm/px slide of small and big dark dots; 'big_a'/'big_b' look the same."""
    labels_mod = pytest.importorskip("wsi_stnuc.st.labels")
    from wsi_stnuc.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    n_side = 12
    img = np.full((n_side * 20, n_side * 20, 3), 235, np.uint8)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    centres, types = [], []
    for r in range(n_side):
        for c in range(n_side):
            cx, cy = c * 20 + 10.0, r * 20 + 10.0
            t = rng.choice(["small", "big_a", "big_b"])
            radius = 2.5 if t == "small" else 6.0
            img[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2] = (70, 40, 130)
            centres.append((cx, cy))
            types.append(t)
    slide = write_pyramidal_tiff(tmp_path / "slide.tif", img, 0.5, compression="zlib")
    n = len(centres)
    gdf = gpd.GeoDataFrame(
        {
            "cell_id": [f"c{i}" for i in range(n)],
            "cell_type": types,
            "image_class": ["cells"] * n,
            "confidence": np.ones(n),
            "weight": np.ones(n),
        },
        geometry=shapely.buffer(shapely.points(np.array(centres)), 4.0),
    )
    labels = labels_mod.write_labelset(
        gdf, tmp_path / "labels.parquet", ClassTable.from_names(["cells"])
    )
    return labels, slide


def test_taxonomy_command_writes_yaml_tables_and_figure(labelled_slide, tmp_path):
    labels, slide = labelled_slide
    out = tmp_path / "learned" / "taxonomy.yaml"
    args = ["taxonomy", str(labels), str(slide), "--out", str(out), "--min-f1", "0.8",
            "--crop-size", "16", "--block-um", "20", "--folds", "2", "--epochs", "1"]  # fmt: skip
    result = CliRunner().invoke(cli_main.cli, args)
    assert result.exit_code == 0, result.output
    tax = Taxonomy.from_yaml(out)
    assert set(tax.mapping) == {"small", "big_a", "big_b"}
    assert tax.mapping["big_a"] == tax.mapping["big_b"]
    assert tax.mapping["small"] not in (tax.mapping["big_a"], "unknown")
    assert "merge_tree" in tax.notes
    for suffix in ("_confusion_before.csv", "_confusion_after.csv"):
        assert (out.parent / f"taxonomy{suffix}").exists()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_taxonomy_command_wants_labels_slide_pairs(labelled_slide, tmp_path):
    labels, slide = labelled_slide
    result = CliRunner().invoke(
        cli_main.cli,
        ["taxonomy", str(labels), str(slide), str(labels), "--out", str(tmp_path / "t.yaml")],
    )
    assert result.exit_code == 2
    assert "pairs" in result.output
    swapped = CliRunner().invoke(
        cli_main.cli, ["taxonomy", str(slide), str(labels), "--out", str(tmp_path / "t.yaml")]
    )
    assert swapped.exit_code == 2
    assert "LabelSet" in swapped.output
