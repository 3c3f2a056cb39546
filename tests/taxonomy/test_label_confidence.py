from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import UNKNOWN
from wsi_stnuc.errors import InputError
from wsi_stnuc.taxonomy.crops import ArrayReader
from wsi_stnuc.taxonomy.label_confidence import hematoxylin_support, label_weights

PINK = (235, 170, 200)  # eosin-ish background
PURPLE = (70, 50, 140)  # hematoxylin-dark nucleus


def _slide_with_nuclei(centres, radius=8, shape=(400, 600)):
    img = np.full((*shape, 3), PINK, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cx, cy in centres:
        img[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2] = PURPLE
    return img


def _labels(centres, radius=8.0, confidence=None):
    n = len(centres)
    return gpd.GeoDataFrame(
        {
            "cell_id": [f"c{i}" for i in range(n)],
            "cell_type": ["T"] * n,
            "image_class": ["inflammatory"] * n,
            "confidence": np.full(n, 0.9) if confidence is None else confidence,
            "weight": np.ones(n),
        },
        geometry=shapely.buffer(shapely.points(np.asarray(centres, float)), radius),
    )


NUCLEI = [(50, 50), (80, 60), (300, 200), (520, 320), (515, 30)]


def test_polygon_on_background_loses_its_weight():
    reader = ArrayReader(_slide_with_nuclei(NUCLEI), 0.25)
    on_background = (200, 300)
    labels = _labels([*NUCLEI, on_background])
    out = label_weights(labels, reader, mpp=0.5)
    assert list(out.index) == list(labels.index)
    assert np.all(out["weight"].iloc[:5] > 0.9)
    assert out["weight"].iloc[5] < 0.1
    assert out["image_class"].iloc[5] == UNKNOWN
    assert np.all(out["image_class"].iloc[:5] == "inflammatory")
    assert out["h_support"].iloc[5] < 0.2 * out["h_support"].iloc[:5].min()
    # soft class targets: the polygon off its nucleus loses them, the others keep them
    labels["prob_inflammatory"] = np.float32(0.8)
    probs = label_weights(labels, reader, mpp=0.5)["prob_inflammatory"].to_numpy()
    np.testing.assert_allclose(probs, [0.8] * 5 + [0.0], rtol=1e-6)


def test_half_registered_polygon_has_less_support_than_a_centred_one():
    reader = ArrayReader(_slide_with_nuclei(NUCLEI), 0.25)
    shifted = [(300, 200), (300 + 10, 200)]  # the second polygon is shifted by 10 px
    h = hematoxylin_support(np.asarray(_labels(shifted).geometry.values), reader, mpp=0.5)
    assert h["h_support"].iloc[0] > h["h_support"].iloc[1] > 0


def test_low_confidence_makes_class_unknown_but_keeps_weight():
    reader = ArrayReader(_slide_with_nuclei(NUCLEI), 0.25)
    conf = np.array([0.9, 0.2, 0.9, 0.9, 0.9])
    out = label_weights(_labels(NUCLEI, confidence=conf), reader, min_confidence=0.5, mpp=0.5)
    assert out["image_class"].tolist()[1] == UNKNOWN
    assert out["weight"].iloc[1] > 0.9
    assert "prob_inflammatory" not in out  # none in, none out


def test_missing_columns_are_an_input_error():
    reader = ArrayReader(_slide_with_nuclei(NUCLEI), 0.25)
    with pytest.raises(InputError, match="confidence"):
        label_weights(_labels(NUCLEI).drop(columns="confidence"), reader)


@pytest.mark.realdata
def test_real_slide_nuclei_outweigh_polygons_on_glass(cmu_slide):
    """On the real CMU slide: polygons on dark blobs (nuclei) keep their weight, polygons on
    empty glass lose it."""
    from scipy import ndimage as ndi

    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.stain import hematoxylin_od

    with open_slide(cmu_slide) as slide:
        scale = 1.0 / slide.mpp[0]  # level-0 px per 1 µm output pixel
        h = hematoxylin_od(slide.read_region(0, 0, 1100, 1480, 1.0))
        blobs, n = ndi.label(ndi.gaussian_filter(h, 1) > np.percentile(h, 97))
        sizes = ndi.sum(np.ones_like(h), blobs, np.arange(1, n + 1))
        ids = np.argsort(sizes)[::-1][:30] + 1
        nuclei = np.array(ndi.center_of_mass(h, blobs, ids))[:, ::-1] + 0.5
        empty = ndi.uniform_filter(h, 15) < 0.03
        ys, xs = np.nonzero(empty[20:-20, 20:-20])
        pick = np.random.default_rng(0).choice(len(xs), 30, replace=False)
        glass = np.column_stack([xs[pick], ys[pick]]) + 20.5
        centres = np.vstack([nuclei, glass]) * scale
        out = label_weights(_labels(centres, radius=2.5 * scale), slide, mpp=0.5)
    w = out["weight"].to_numpy()
    assert np.median(w[:30]) > 0.8
    assert np.median(w[30:]) < 0.2
    assert (out["image_class"].iloc[30:] == UNKNOWN).mean() > 0.8
