"""``wsi-stnuc dataset`` and ``wsi-stnuc train`` through click's CliRunner."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from click.testing import CliRunner
from skimage.draw import disk

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.model.checkpoint import load_checkpoint
from wsi_stnuc.slide.write import write_pyramidal_tiff
from wsi_stnuc_cli.main import cli

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def toy_inputs(tmp_path):
    """A 480 x 640 slide at 0.25 µm/px with dark discs, and its LabelSet GeoParquet."""
    from wsi_stnuc.st.labels import write_labelset

    rng = np.random.default_rng(1)
    image = rng.normal((230, 180, 200), 8, (480, 640, 3))
    ys, xs = np.meshgrid(np.arange(30, 450, 40), np.arange(30, 610, 40))
    centres = np.column_stack([xs.ravel(), ys.ravel()]) + rng.uniform(-5, 5, (xs.size, 2))
    names = rng.choice(["epithelial", "inflammatory"], len(centres))
    for x, y in centres:
        image[disk((y - 0.5, x - 0.5), 10, shape=image.shape[:2])] = (90, 50, 140)
    slide = write_pyramidal_tiff(tmp_path / "s.tif", np.clip(image, 0, 255).astype(np.uint8),
                                 mpp=0.25, compression="zlib")  # fmt: skip
    labels = gpd.GeoDataFrame(
        {"cell_id": [f"c{i}" for i in range(len(names))], "cell_type": names,
         "image_class": names, "confidence": 1.0, "weight": 1.0},
        geometry=shapely.buffer(shapely.points(centres), 10),
    )  # fmt: skip
    return slide, write_labelset(labels, tmp_path / "labels.parquet", CLASSES)


def test_dataset_then_train(tmp_path):
    slide, labels = toy_inputs(tmp_path)
    runner = CliRunner()
    ds = tmp_path / "ds.zarr"
    res = runner.invoke(cli, ["dataset", "--slide", str(slide), "--labels", str(labels),
                              "--out", str(ds), "--patch", "64", "--block-um", "40"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "training" in res.output and "validation" in res.output and ds.is_dir()
    res = runner.invoke(cli, ["train", str(ds), "--out", str(tmp_path / "run"), "--epochs", "1",
                              "--width", "8", "--depth", "2", "--batch-size", "4",
                              "--threads", "1", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "best.pt").exists() and "best checkpoint" in res.output
    # a step budget and no augmentation: stored in the checkpoint's config
    res = runner.invoke(cli, ["train", str(ds), "--out", str(tmp_path / "steps"), "--max-steps",
                              "3", "--augment", "none", "--width", "8", "--depth", "2",
                              "--batch-size", "2", "--threads", "1", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    log = pd.read_csv(tmp_path / "steps" / "log.csv")
    assert log["step"].iloc[-1] == 3
    _, meta = load_checkpoint(tmp_path / "steps" / "best.pt", device="cpu")
    assert meta["train_config"]["max_steps"] == 3 and meta["train_config"]["augment"] is False


def test_train_on_a_foreign_folder_is_a_clean_error(tmp_path):
    (tmp_path / "notds").mkdir()
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "notds"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "not a wsi-stnuc patch dataset" in res.output


def test_dataset_with_a_taxonomy_then_soft_class_training(tmp_path):
    """Types with probabilities, re-classed by a taxonomy YAML at dataset time, train with
    --soft-classes; a dataset without probabilities refuses it cleanly."""
    from wsi_stnuc.classes import Taxonomy
    from wsi_stnuc.st.labels import read_labelset, write_labelset
    from wsi_stnuc.training.dataset import open_patch_dataset

    slide, plain = toy_inputs(tmp_path)
    gdf, _ = read_labelset(plain)
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1.0, 1.0, 1.0], len(gdf)).astype(np.float32)
    for j, t in enumerate(["T", "B", "Fibro"]):
        gdf[f"type_prob_{t}"] = p[:, j]
    gdf["cell_type"] = np.array(["T", "B", "Fibro"])[p.argmax(1)]
    labels = write_labelset(gdf, tmp_path / "typed.parquet", CLASSES)
    tax = Taxonomy(ClassTable.from_names(["lymphocyte", "spindle"]),
                   {"T": "lymphocyte", "B": "lymphocyte", "Fibro": "spindle"})  # fmt: skip
    tax.to_yaml(tmp_path / "tax.yaml")
    runner = CliRunner()
    ds = tmp_path / "ds.zarr"
    res = runner.invoke(cli, ["dataset", "--slide", str(slide), "--labels", str(labels),
                              "--out", str(ds), "--patch", "64", "--block-um", "40",
                              "--taxonomy", str(tmp_path / "tax.yaml")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "lymphocyte, spindle" in res.output
    root = open_patch_dataset(ds)
    probs = root["class_probs"][:]
    assert probs.shape[1] == 2 and set(np.unique(root["cls"][:])) <= {0, 1, 2}
    # T + B merge into one class: its probability is their sum
    assert np.isin(np.round(probs[:, 0], 4), np.round(p[:, 0] + p[:, 1], 4)).all()
    train_args = ["--max-steps", "2", "--width", "8", "--depth", "2", "--batch-size", "2",
                  "--threads", "1", "--device", "cpu", "--soft-classes"]  # fmt: skip
    res = runner.invoke(cli, ["train", str(ds), "--out", str(tmp_path / "soft"), *train_args])
    assert res.exit_code == 0, res.output
    _, meta = load_checkpoint(tmp_path / "soft" / "best.pt", device="cpu")
    assert meta["train_config"]["soft_classes"] is True
    res = runner.invoke(cli, ["dataset", "--slide", str(slide), "--labels", str(plain),
                              "--out", str(tmp_path / "plain.zarr"), "--patch", "64"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", str(tmp_path / "plain.zarr"), "--out",
                              str(tmp_path / "no"), *train_args])  # fmt: skip
    assert res.exit_code == 2 and "no class probabilities" in res.output


def test_dataset_from_several_sections(tmp_path):
    from wsi_stnuc.training.dataset import open_patch_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    slide_a, labels_a = toy_inputs(tmp_path / "a")
    slide_b, labels_b = toy_inputs(tmp_path / "b")
    csv = tmp_path / "sections.csv"
    pd.DataFrame({"slide": ["a/s.tif", "b/s.tif"], "labels": ["a/labels.parquet",
                  "b/labels.parquet"], "name": ["lung", "skin"]}).to_csv(csv, index=False)  # fmt: skip
    runner = CliRunner()
    ds = tmp_path / "ds.zarr"
    res = runner.invoke(cli, ["dataset", "--sections", str(csv), "--val-section", "skin",
                              "--out", str(ds), "--patch", "64", "--block-um", "40",
                              "--ignore-unlabelled", "--snap-um", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "from 2 section(s)" in res.output and "label repairs" in res.output
    root = open_patch_dataset(ds)
    assert root.attrs["sources"] == ["lung", "skin"]
    assert (root["split"][:][root["source"][:] == 1] == 1).all()
    # Pairs on the command line work the same; a lone --slide is a usage error.
    res = runner.invoke(cli, ["dataset", "--slide", str(slide_a), "--labels", str(labels_a),
                              "--slide", str(slide_b), "--out", str(tmp_path / "x.zarr")])  # fmt: skip
    assert res.exit_code == 2 and "pairs" in res.output
    res = runner.invoke(cli, ["dataset", "--sections", str(csv), "--val-section", "liver",
                              "--out", str(tmp_path / "y.zarr")])  # fmt: skip
    assert res.exit_code == 2 and "liver" in res.output


def test_train_with_an_unusable_device_fails_once_up_front(tmp_path):
    (tmp_path / "ds").mkdir()
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "o"),
                                   "--device", "gpu0"])  # fmt: skip
    assert res.exit_code == 2 and "--device 'gpu0'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()
