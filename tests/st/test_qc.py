"""Cell QC: each reason counted, polygons repaired, outside-slide cells dropped."""

from __future__ import annotations

import numpy as np
import shapely

from wsi_stnuc.st.qc import qc_cells


def test_reasons_and_repair(bundle):
    b = bundle
    x = b.adata.X.tolil()
    x[0, :] = 0  # low counts
    x[1, :] = 0
    x[1, 0] = 50  # many counts, one gene
    b.adata.X = x.tocsr()
    geoms = np.asarray(b.nuclei.geometry.values).copy()
    # a self-intersecting bow-tie: make_valid repairs it into two triangles, largest kept
    geoms[2] = shapely.Polygon([(100, 100), (110, 110), (110, 100), (100, 110)])
    geoms[3] = shapely.box(0, 0, 0.5, 0.5)  # 0.25 µm²: implausible nucleus
    geoms[4] = shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])  # zero area: unrepairable
    b.nuclei = b.nuclei.set_geometry(geoms)
    b.nuclei = b.nuclei[b.nuclei["cell_id"] != "cell-5"].reset_index(drop=True)  # no nucleus
    out, rep = qc_cells(b, min_counts=10, min_genes=3, nucleus_area_um2=(5, 400))
    assert rep.dropped["low_counts"] == 1
    assert rep.dropped["few_genes"] == 1
    assert rep.dropped["no_nucleus"] == 1
    assert rep.dropped["invalid_polygon"] == 1
    assert rep.dropped["nucleus_area"] == 1
    assert rep.repaired_polygons == 1
    assert rep.n_out == b.n_cells - 5 == out.n_cells
    assert "cell-2" in out.adata.obs_names
    assert out.nuclei.geometry.is_valid.all()
    assert set(out.nuclei["cell_id"]) == set(out.adata.obs_names)
    assert "dropped: low_counts" in str(rep)


def test_outside_slide(bundle):
    xs = shapely.get_x(shapely.centroid(np.asarray(bundle.nuclei.geometry.values)))
    cut = float(np.median(xs))
    out, rep = qc_cells(bundle, slide_bounds=(0, 0, cut, 1e6))
    assert rep.dropped["outside_slide"] == int((xs >= cut).sum())
    assert out.n_cells == int((xs < cut).sum())
