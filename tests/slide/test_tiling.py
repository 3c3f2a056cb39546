"""Tile grid covers the slide exactly once; the Dask stream equals serial reads."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.slide.tiling import stream_tiles, tile_grid


@pytest.mark.parametrize("mpp", [0.25, 0.37, 1.0])
def test_grid_covers_slide_without_gaps_or_overlaps(lossless_pyramid, mpp):
    with open_slide(lossless_pyramid) as slide:
        grid = tile_grid(slide, mpp, core=256, halo=32)
        w, h = slide.dimensions
    sx = mpp / 0.25
    assert grid.attrs["sx"] == pytest.approx(sx) and grid.attrs["read_px"] == 320
    assert grid.attrs["n_cols"] * grid.attrs["n_rows"] == len(grid)
    cores = grid.geometry.values
    union = shapely.union_all(cores)
    assert shapely.covers(union, shapely.box(0, 0, w, h))
    # no overlaps: areas add up to the union's area
    assert shapely.area(cores).sum() == pytest.approx(union.area, rel=1e-9)
    # neighbours share their edge exactly (same float expression on both sides)
    by_rc = grid.set_index(["row", "col"])
    right = by_rc.loc[[(r, c + 1) for r, c in by_rc.index if c + 1 < grid.attrs["n_cols"]]]
    left = by_rc.loc[[(r, c) for r, c in by_rc.index if c + 1 < grid.attrs["n_cols"]]]
    np.testing.assert_array_equal(left.core_x1.to_numpy(), right.core_x0.to_numpy())
    np.testing.assert_allclose(grid.read_x0, grid.core_x0 - 32 * sx)
    # half-open ownership: every point of the slide has exactly one owning tile
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [w, h], (5000, 2))
    edges = grid.core_x1.to_numpy()[:50] % w  # points exactly on core edges
    pts[: len(edges), 0] = edges
    inside = (
        (pts[:, None, 0] >= grid.core_x0.to_numpy())
        & (pts[:, None, 0] < grid.core_x1.to_numpy())
        & (pts[:, None, 1] >= grid.core_y0.to_numpy())
        & (pts[:, None, 1] < grid.core_y1.to_numpy())
    )
    assert (inside.sum(axis=1) == 1).all()


def test_tissue_filter(lossless_pyramid):
    with open_slide(lossless_pyramid) as slide:
        full = tile_grid(slide, 0.5, core=128, halo=16)
        tissue = shapely.Point(1000, 900).buffer(300)
        some = tile_grid(slide, 0.5, core=128, halo=16, tissue=tissue)
        most = tile_grid(slide, 0.5, core=128, halo=16, tissue=tissue, min_tissue_fraction=0.9)
        none = tile_grid(slide, 0.5, core=128, halo=16, tissue=shapely.Polygon())
    assert 0 < len(most) < len(some) < len(full) and len(none) == 0
    assert shapely.intersects(some.geometry.values, tissue).all()
    frac = shapely.area(shapely.intersection(most.geometry.values, tissue)) / (256 * 256)
    assert (frac >= 0.9).all()
    # tile ids are stable: the same tile keeps its id when others are filtered out
    assert set(some.tile_id) <= set(full.tile_id)
    assert (some.tile_id == some.row * full.attrs["n_cols"] + some.col).all()


@pytest.mark.parametrize(("scheduler", "in_flight"), [("threads", 8), ("threads", 1), ("sync", 3)])
def test_stream_equals_serial_reads(jpeg_pyramid, scheduler, in_flight):
    with open_slide(jpeg_pyramid) as slide:
        grid = tile_grid(slide, 0.6, core=200, halo=24)
        expected = [
            slide.read_region(r.read_x0, r.read_y0, 248, 248, mpp=0.6) for r in grid.itertuples()
        ]
    got = list(
        stream_tiles(
            jpeg_pyramid, grid, max_in_flight=in_flight, scheduler=scheduler, num_workers=2
        )
    )
    assert [t for t, _ in got] == grid.tile_id.tolist()
    for (_, image), ref in zip(got, expected, strict=True):
        np.testing.assert_array_equal(image, ref)


def test_stream_accepts_reader_and_mpp_override(tmp_path, synthetic_image):
    import tifffile

    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, synthetic_image[:600, :700], tile=(128, 128), photometric="rgb")
    with open_slide(path, mpp=0.5) as slide:
        grid = tile_grid(slide, 1.0, core=128, halo=8)
        got = dict(stream_tiles(slide, grid, max_in_flight=4))
        ref = slide.read_region(grid.read_x0[3], grid.read_y0[3], 144, 144, mpp=1.0)
    assert len(got) == len(grid) == 3 * 3
    np.testing.assert_array_equal(got[grid.tile_id[3]], ref)


def test_stream_with_distributed_client(jpeg_pyramid):
    distributed = pytest.importorskip("distributed")
    with open_slide(jpeg_pyramid) as slide:
        grid = tile_grid(slide, 1.0, core=256, halo=16)
        expected = {
            r.tile_id: slide.read_region(r.read_x0, r.read_y0, 288, 288, 1.0)
            for r in grid.itertuples()
        }
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        got = list(stream_tiles(jpeg_pyramid, grid, scheduler=client, max_in_flight=4))
    assert [t for t, _ in got] == grid.tile_id.tolist()
    for tile_id, image in got:
        np.testing.assert_array_equal(image, expected[tile_id])


@pytest.mark.slow
def test_stream_with_processes(jpeg_pyramid):
    with open_slide(jpeg_pyramid) as slide:
        grid = tile_grid(slide, 1.0, core=256, halo=16)
        expected = [
            slide.read_region(r.read_x0, r.read_y0, 288, 288, 1.0) for r in grid.itertuples()
        ]
    got = list(stream_tiles(jpeg_pyramid, grid, scheduler="processes", num_workers=2))
    assert [t for t, _ in got] == grid.tile_id.tolist()
    for (_, image), ref in zip(got, expected, strict=True):
        np.testing.assert_array_equal(image, ref)


def test_unknown_scheduler(jpeg_pyramid):
    with open_slide(jpeg_pyramid) as slide:
        grid = tile_grid(slide, 1.0, core=256, halo=16)
    with pytest.raises(ValueError, match="unknown scheduler"):
        list(stream_tiles(jpeg_pyramid, grid, scheduler="gpu"))
