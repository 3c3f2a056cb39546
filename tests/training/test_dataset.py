"""Patch dataset: tiles from a small slide, spatial-block split, zarr layout, torch items."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from skimage.draw import disk

from wsi_stnuc.classes import IGNORE_CLASS, ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.write import write_pyramidal_tiff
from wsi_stnuc.training.dataset import (
    PatchDataset,
    build_patch_dataset,
    open_patch_dataset,
    plan_tiles,
    split_blocks,
    write_patch_dataset,
)
from wsi_stnuc.training.targets import targets_from_instances

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def toy_slide(tmp_path, size=(600, 800), spacing=40, radius=11.0, seed=0):
    """Pink noise with dark discs on a jittered grid (level 0 at 0.25 µm/px) + their LabelSet."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = rng.normal((230, 180, 200), 8, (h, w, 3))
    ys, xs = np.meshgrid(np.arange(30, h - 30, spacing), np.arange(30, w - 30, spacing))
    centres = np.column_stack([xs.ravel(), ys.ravel()]) + rng.uniform(-5, 5, (xs.size, 2))
    names = rng.choice(["epithelial", "inflammatory", "unknown"], len(centres))
    for (x, y), name in zip(centres, names, strict=True):
        rr, cc = disk((y - 0.5, x - 0.5), radius, shape=(h, w))
        image[rr, cc] = (120, 60, 160) if name != "inflammatory" else (60, 40, 120)
    path = write_pyramidal_tiff(tmp_path / "toy.tif", np.clip(image, 0, 255).astype(np.uint8),
                                mpp=0.25, compression="zlib")  # fmt: skip
    labels = gpd.GeoDataFrame(
        {"cell_id": [f"c{i}" for i in range(len(centres))], "image_class": names,
         "weight": np.ones(len(centres))},
        geometry=shapely.buffer(shapely.points(centres), radius),
    )  # fmt: skip
    return path, labels


def test_plan_tiles_centred_inside_bounds():
    origins = plan_tiles((0, 0, 100, 50), (40, 40), (40, 40))
    assert origins.tolist() == [[10, 5], [50, 5]]
    assert plan_tiles((0, 0, 10, 10), (40, 40), (40, 40)).tolist() == [[-15, -15]]


def test_split_blocks_guard_band_and_fraction():
    origins = plan_tiles((0, 0, 1000, 1000), (100, 100), (50, 50))  # overlapping tiles
    block, split, keep = split_blocks(origins, (100, 100), 250, 0.3, seed=1, guard=10)
    assert split.any() and not split.all()
    # No kept training tile overlaps a kept validation tile.
    boxes = shapely.box(origins[:, 0], origins[:, 1], origins[:, 0] + 100, origins[:, 1] + 100)
    train, val = boxes[keep & (split == 0)], boxes[keep & (split == 1)]
    assert shapely.distance(train[:, None], val[None, :]).min() >= 10
    assert keep[split == 1].all() and not keep.all()
    # Blocks are whole: each block has one split.
    for b in np.unique(block):
        assert len(np.unique(split[block == b])) == 1
    frac = split.mean()
    assert 0.2 <= frac <= 0.5


def test_build_patch_dataset(tmp_path):
    slide, labels = toy_slide(tmp_path)
    out = build_patch_dataset(slide, labels, tmp_path / "ds.zarr", classes=CLASSES, mpp=0.5,
                              patch=64, block_um=40.0, seed=0)  # fmt: skip
    root = open_patch_dataset(out)
    n = root["images"].shape[0]
    assert root["images"].shape == (n, 64, 64, 3) and root["images"].chunks == (1, 64, 64, 3)
    assert root["hv"].shape == (n, 2, 64, 64)
    assert root.attrs["classes"] == CLASSES.to_dict() and root.attrs["mpp"] == 0.5
    split = root["split"][:]
    assert n >= 4 and split.any() and not split.all()
    # Nuclei in the targets sit on the dark discs of the image (transform slide -> model px).
    images, inst = root["images"][:], root["inst"][:]
    assert images[inst > 0].mean() < 130 < images[inst == 0].mean()
    assert set(np.unique(root["cls"][:])) <= {0, 1, 2, IGNORE_CLASS}
    # Provenance: x0/y0 are level-0 corners that re-read to the stored image.
    from wsi_stnuc.slide.registry import open_slide

    with open_slide(slide) as s:
        again = s.read_region(float(root["x0"][1]), float(root["y0"][1]), 64, 64, 0.5)
    assert np.abs(again.astype(int) - images[1]).mean() < 2
    # Rebuilding over an existing dataset replaces it; a foreign folder is refused.
    build_patch_dataset(slide, labels, out, classes=CLASSES, mpp=0.5, patch=64, block_um=40.0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="not a wsi-stnuc patch dataset"):
        build_patch_dataset(slide, labels, foreign, classes=CLASSES, mpp=0.5, patch=64)


def test_write_and_read_patch_dataset(tmp_path):
    inst = np.zeros((32, 32), np.int32)
    inst[4:14, 6:20] = 1
    inst[18:28, 10:22] = 2
    image = np.full((32, 32, 3), 220, np.uint8)
    image[inst > 0] = (90, 40, 140)
    t = targets_from_instances(inst, {1: 1, 2: 2}, class_weight={2: 0.4})
    records = [
        {"image": image, "targets": t, "source": "a", "split": "train"},
        {"image": image, "targets": t, "source": "b", "split": "val"},
        {"image": image, "targets": t, "source": "a", "split": "train"},
    ]
    out = write_patch_dataset(tmp_path / "m.zarr", records, CLASSES, mpp=0.5)
    train = PatchDataset(out, "train", augment=True, seed=3)
    val = PatchDataset(out, "val", augment=False, max_memory_mb=0)  # read lazily
    assert len(train) == 2 and len(val) == 1
    item = val[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].max() <= 1.0
    assert item["cls"].dtype.is_floating_point is False and int(item["cls"][5, 10]) == 1
    np.testing.assert_allclose(item["hv"].numpy(), t.hv)
    assert float(item["cls_weight"][20, 15]) == pytest.approx(0.4)
    assert float(item["cls_weight"][5, 10]) == 1.0
    a, b = train[0], train[0]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # seeded
    train.set_epoch(1)
    c = train[0]
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)
    with pytest.raises(InputError, match="not found"):
        PatchDataset(tmp_path / "none.zarr")
    # A dataset written before cls_weight existed reads with the class fully trusted.
    import shutil

    shutil.rmtree(out / "cls_weight")
    old = PatchDataset(out, "val", augment=False)[0]
    assert float(old["cls_weight"].min()) == 1.0 and int(old["cls"][5, 10]) == 1


def test_soft_class_maps_survive_augmentation(tmp_path):
    """With prob_<class> columns the dataset keeps per-instance probabilities, and every
    nucleus pixel of an augmented item carries its own instance's row."""
    slide, labels = toy_slide(tmp_path)
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1.0, 1.0, 1.0], len(labels))[:, :2].astype(np.float32)
    labels["prob_epithelial"], labels["prob_inflammatory"] = p[:, 0], p[:, 1]
    out = build_patch_dataset(slide, labels, tmp_path / "ds.zarr", classes=CLASSES, mpp=0.5,
                              patch=64, block_um=40.0)  # fmt: skip
    root = open_patch_dataset(out)
    offsets = root["class_probs_offset"][:]
    assert len(offsets) == root["images"].shape[0] + 1
    assert offsets[-1] == root["class_probs"].shape[0]
    assert all(
        root["inst"][i].max() == offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)
    )
    ds = PatchDataset(out, "train", augment=True, seed=5, soft_classes=True)
    rows = {tuple(np.round(r, 5)) for r in p}
    for i in range(len(ds)):
        item = ds[i]
        inst, soft = item["inst"].numpy(), item["cls_soft"].numpy()
        assert soft.shape == (2, 64, 64)
        assert np.all(soft[:, inst == 0] == 0)
        for k in np.unique(inst[inst > 0]):
            values = np.unique(soft[:, inst == k], axis=1)
            assert values.shape[1] == 1 and tuple(np.round(values[:, 0], 5)) in rows
    assert "cls_soft" not in PatchDataset(out, "train")[0]
    # un-augmented: an instance's row is that of the label polygon under it
    plain = PatchDataset(out, "train", augment=False, soft_classes=True)
    item = plain[0]
    inst, soft = item["inst"].numpy(), item["cls_soft"].numpy()
    j = int(plain.indices[0])
    x0, y0 = float(root["x0"][j]), float(root["y0"][j])
    for k in np.unique(inst[inst > 0]):
        rr, cc = np.nonzero(inst == k)
        centre = shapely.points(x0 + (cc.mean() + 0.5) * 2.0, y0 + (rr.mean() + 0.5) * 2.0)
        (row,) = labels.sindex.query(centre, predicate="within")
        np.testing.assert_allclose(soft[:, rr[0], cc[0]], p[row], rtol=1e-6)


def test_build_section_dataset_records_sections_and_splits(tmp_path):
    from wsi_stnuc.training.dataset import Section, build_section_dataset

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    slide_a, labels_a = toy_slide(tmp_path / "a", seed=1)
    slide_b, labels_b = toy_slide(tmp_path / "b", size=(400, 400), seed=2)
    sections = [Section(slide_a, labels_a, name="colon"), Section(slide_b, labels_b, val=True)]
    out = build_section_dataset(sections, tmp_path / "ds.zarr", classes=CLASSES, mpp=0.5,
                                patch=64, block_um=40.0)  # fmt: skip
    root = open_patch_dataset(out)
    source, split = root["source"][:], root["split"][:]
    assert root.attrs["sources"] == ["colon", "toy"]
    info = {s["name"]: s for s in root.attrs["sections"]}
    assert info["toy"]["val"] and info["toy"]["n_val"] == info["toy"]["n_patches"]
    assert (split[source == 1] == 1).all()  # the val section is validation only
    colon = split[source == 0]
    assert colon.any() and not colon.all()  # blocks inside the other section
    assert len(source) == info["colon"]["n_patches"] + info["toy"]["n_patches"]
    # Patches of the second section are that slide's pixels.
    ds = PatchDataset(out, "val", augment=False)
    assert len(ds) == int(split.sum())
    with pytest.raises(InputError, match="unique"):
        build_section_dataset([Section(slide_a, labels_a, name="x"), Section(slide_b, labels_b,
                               name="x")], tmp_path / "dup.zarr", classes=CLASSES, mpp=0.5,
                              patch=64)  # fmt: skip
