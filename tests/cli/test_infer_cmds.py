"""``wsi-stnuc infer`` end to end with a real (tiny, untrained) checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.export.geoparquet import read_geoparquet_metadata
from wsi_stnuc.model.checkpoint import save_checkpoint
from wsi_stnuc.model.net import NucleiNet
from wsi_stnuc_cli import main as cli_main


def _helpers():
    path = Path(__file__).parents[1] / "inference" / "test_infer.py"
    spec = importlib.util.spec_from_file_location("_infer_test_helpers_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    classes = ClassTable.from_names(["epithelial", "inflammatory"])
    model = NucleiNet(classes.n_classes, width=4, depth=2)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return save_checkpoint(path, model, classes=classes, mpp=0.5)


def _invoke(*args):
    return CliRunner().invoke(cli_main.cli, ["infer", *map(str, args)])


def test_infer_folder_with_a_bad_slide(checkpoint, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    H.synthetic_slide(slides / "good.tif", size=(150, 130))
    (slides / "broken.tif").write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    args = ["--model", checkpoint, slides, "--out", out, "--no-tissue", "--core", "64",
            "--halo", "16", "--max-area", "40", "--batch-size", "2", "--zip",
            "--workers", "2"]  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 1, result.output
    assert "broken.tif" in result.output
    manifest = pd.read_csv(out / "manifest.csv")
    manifest.index = manifest["path"].map(lambda p: Path(p).stem)
    assert manifest.loc["good", "status"] == "ok"
    assert manifest.loc["broken", "status"] == "failed"
    good = manifest.loc["good", "name"]
    meta = read_geoparquet_metadata(out / f"{good}.parquet")
    assert meta["model"]["name"] == "tiny.pt" and len(meta["model"]["sha256"]) == 64
    assert (out / f"{good}.geojson.zip").is_file()
    # rerun with --resume on the good slide alone, same settings: skipped, exit 0
    again = _invoke(*args[:1], checkpoint, slides / "good.tif", *args[3:], "--resume")
    assert again.exit_code == 0, again.output
    assert "1 of 1 slides done" in again.output


def test_infer_usage_errors(checkpoint, tmp_path):
    missing = _invoke("--model", tmp_path / "none.pt", tmp_path, "--out", tmp_path / "o")
    assert missing.exit_code == 2 and "none.pt" in missing.output
    both = _invoke("--model", checkpoint, tmp_path, "--out", tmp_path / "o", "--scheduler",
                   "tcp://x:1", "--local-cluster", "2")  # fmt: skip
    assert both.exit_code == 2
    nothing = _invoke("--model", checkpoint, tmp_path / "nope*.svs", "--out", tmp_path / "o")
    assert nothing.exit_code == 2 and "glob matches no file" in nothing.output


@pytest.mark.realdata
@pytest.mark.slow
def test_real_slide_with_tissue_detection(checkpoint, cmu_slide, tmp_path):
    from wsi_stnuc.inference.infer import checkpoint_segmenter, infer_slide

    seg = checkpoint_segmenter(checkpoint, "cpu")
    seg.mpp = 2.0  # coarse, so the CPU run stays short; the pipeline is what is tested
    res = infer_slide(seg, cmu_slide, tmp_path, core=128, halo=16, batch_size=4,
                      progress=False)  # fmt: skip
    assert 0 < res.tissue_area_mm2 < 2220 * 2967 * 0.499**2 / 1e6
    meta = read_geoparquet_metadata(res.parquet)
    assert meta["slide"]["mpp"][0] == pytest.approx(0.499, abs=1e-3)
    assert res.n_tiles == meta["tiling"]["n_rows"] * meta["tiling"]["n_cols"] or res.n_tiles > 0


def test_model_device_and_options_are_checked_once_up_front(checkpoint, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    H.synthetic_slide(slides / "s.tif", size=(100, 90))
    out = tmp_path / "out"
    base = [slides, "--out", out, "--no-tissue"]
    not_model = tmp_path / "notes.pt"
    not_model.write_text("not a checkpoint")
    cases = {
        "not a readable torch checkpoint": ["--model", not_model, *base],
        "--device 'gpu'": ["--model", checkpoint, *base, "--device", "gpu"],
        "--halo 8 is too small": ["--model", checkpoint, *base, "--halo", "8"],
        "min < max": ["--model", checkpoint, *base, "--min-area", "50", "--max-area", "40"],
    }
    if not torch.cuda.is_available():
        cases["--device cpu"] = ["--model", checkpoint, *base, "--device", "cuda"]
    for message, args in cases.items():
        result = _invoke(*args)
        assert result.exit_code == 2, (message, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not out.exists() or not list(out.iterdir()), message  # no slide was started
    (tmp_path / "file").write_text("x")
    result = _invoke("--model", checkpoint, *base[:1], "--out", tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.output


def test_core_smaller_than_halo_warns(checkpoint, tmp_path, caplog):
    slides = tmp_path / "slides"
    slides.mkdir()
    H.synthetic_slide(slides / "s.tif", size=(60, 50))
    result = _invoke("--model", checkpoint, slides, "--out", tmp_path / "out", "--no-tissue",
                     "--core", "16", "--max-area", "100", "--no-qupath")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "is smaller than the halo" in caplog.text


@pytest.mark.realdata
def test_plain_png_and_jpeg_images_with_mpp_then_evaluate(checkpoint, data_dir, tmp_path):
    png = sorted((data_dir / "nuclei" / "monuseg_train" / "images").glob("*.png"))[0]
    jpg = sorted((data_dir / "nuclei" / "consep_train" / "images").glob("*.jpg"))[0]
    out = tmp_path / "out"
    args = ["--model", checkpoint, png, jpg, "--out", out, "--no-tissue", "--core", "256"]
    without = _invoke(*args)
    assert without.exit_code == 1 and "pass --mpp" in without.output
    result = _invoke(*args, "--mpp", "0.25")
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv").set_index("path")
    for image in (png, jpg):
        row = manifest.loc[str(image.resolve())]
        assert row["status"] == "ok" and row["mpp_source"] == "filled" and row["mpp"] == 0.25
        meta = read_geoparquet_metadata(row["parquet"])
        assert meta["slide"]["backend"] == "image" and meta["slide"]["path"] == str(image)
    # the predictions are scored against the image's own manual outlines (an untrained
    # model: the figures are not the point, the pixel frame and µm/px are)
    xml = data_dir / "nuclei" / "monuseg_train" / "annotations" / f"{png.stem}.xml.gz"
    pred = manifest.loc[str(png.resolve()), "parquet"]
    scored = CliRunner().invoke(cli_main.cli, ["evaluate", pred, str(xml)])
    assert scored.exit_code == 0, scored.output
    assert "reference nuclei" in scored.output and "polygon matching" in scored.output


def test_infer_without_model_uses_the_shipped_default(checkpoint, tmp_path, monkeypatch):
    from wsi_stnuc.model import zoo

    shipped = tmp_path / "shipped"
    monkeypatch.setattr(zoo, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(zoo, "DEFAULT_MODEL", "tiny-default")
    zoo.ship_checkpoint(checkpoint, "tiny-default", card={"summary": "test"}, out_dir=shipped)
    H.synthetic_slide(tmp_path / "s.tif", size=(150, 130))
    base = [tmp_path / "s.tif", "--no-tissue", "--core", "64", "--halo", "16",
            "--max-area", "40"]  # fmt: skip
    result = CliRunner().invoke(cli_main.cli, ["infer", *map(str, base), "--out",
                                               str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "shipped tiny-default (the default" in result.output
    name = pd.read_csv(tmp_path / "o" / "manifest.csv")["name"].iloc[0]
    meta = read_geoparquet_metadata(tmp_path / "o" / f"{name}.parquet")
    assert meta["model"]["name"] == "tiny-default.pt"
    # A shipped model by name; an unknown name is a missing file.
    by_name = _invoke("--model", "tiny-default", *base, "--out", tmp_path / "o2")
    assert by_name.exit_code == 0 and "shipped tiny-default:" in by_name.output
    bad = _invoke("--model", "nope", *base, "--out", tmp_path / "o3")
    assert bad.exit_code == 2 and "not found" in bad.output
