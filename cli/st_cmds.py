"""CLI: ``wsi-stnuc celltype`` and ``labels`` — thin shells over ``wsi_stnuc.st``."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_stnuc.errors import InputError

_METHODS = ["panel", "cluster", "transfer"]

typing_options = [
    click.option(
        "--panel",
        default=None,
        help="Marker panel YAML, or a shipped panel name (human_breast, immuno_oncology). "
        "Default: human_breast.",
    ),
    click.option(
        "--reference",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Labelled reference .h5ad for label transfer (implies --method transfer).",
    ),
    click.option(
        "--reference-key",
        default="cell_type",
        show_default=True,
        help="obs column of the reference holding the cell types.",
    ),
    click.option(
        "--method",
        type=click.Choice(_METHODS),
        default=None,
        help="Typing method (default: panel, or transfer with --reference).",
    ),
    click.option(
        "--taxonomy",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Taxonomy YAML: cell type -> image class (default: shipped).",
    ),
    click.option(
        "--min-confidence",
        type=float,
        default=0.2,
        show_default=True,
        help="Below this typing confidence the image class is 'unknown'.",
    ),
]


def _apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def _method(method: str | None, reference: Path | None) -> str:
    if reference is not None and method not in (None, "transfer"):
        raise click.UsageError("--reference is for --method transfer")
    if method == "transfer" and reference is None:
        raise click.UsageError("--method transfer needs --reference REF.h5ad")
    return method or ("transfer" if reference is not None else "panel")


def _read_h5ad(path: Path):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"cannot read AnnData ({exc})") from exc


@click.command("celltype")
@click.argument("adata", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output CSV: cell_id, cell_type, image_class, confidence.",
)
@_apply(typing_options)
@click.option(
    "--no-self-train",
    is_flag=True,
    help="Panel/cluster: keep the raw marker calls (no classifier trained on confident cells).",
)
def celltype(
    adata, out, panel, reference, reference_key, method, taxonomy, min_confidence, no_self_train
):
    """Type the cells of ADATA (.h5ad, or a Xenium output folder) from their expression."""
    from wsi_stnuc.classes import load_taxonomy
    from wsi_stnuc.io_utils import atomic_path
    from wsi_stnuc.st.celltype import image_classes, type_cells

    how = _method(method, reference)
    if adata.is_dir():
        from wsi_stnuc.st.xenium import read_xenium

        data = read_xenium(adata).adata
    else:
        data = _read_h5ad(adata)
    ref = _read_h5ad(reference) if reference is not None else None
    tax = load_taxonomy(taxonomy)
    types = type_cells(
        data,
        how,
        panel=panel,
        reference=ref,
        reference_key=reference_key,
        refine=not no_self_train,
    )
    types["image_class"] = image_classes(types, tax, min_confidence=min_confidence)
    table = types[["cell_type", "image_class", "confidence"]].rename_axis("cell_id")
    with atomic_path(out) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    click.echo(f"typed {len(table)} cells with {how} -> {out}")
    click.echo(table["image_class"].value_counts().to_string())


def _matrix(bundle, alignment, keypoints, matrix_text):
    """ST µm -> level-0 px, from exactly one of the three sources (or the bundle's CSV)."""
    from wsi_stnuc.st.align import (
        affine_from_keypoints,
        microns_to_slide_matrix,
        parse_matrix,
        read_alignment_csv,
    )

    given = [x for x in (alignment, keypoints, matrix_text) if x is not None]
    if len(given) > 1:
        raise click.UsageError("give only one of --alignment, --keypoints, --matrix")
    if matrix_text is not None:
        return parse_matrix(matrix_text), None
    if keypoints is not None:
        m, resid = affine_from_keypoints(keypoints, pixel_size=bundle.pixel_size)
        return microns_to_slide_matrix(m, bundle.pixel_size), resid
    if alignment is None and bundle.meta.get("he_alignment"):
        alignment = Path(bundle.meta["he_alignment"])
        click.echo(f"using the bundle's alignment {alignment.name}")
    if alignment is None:
        raise click.UsageError(
            "no alignment: give --alignment CSV, --keypoints CSV or --matrix a,b,c,d,e,f"
        )
    return microns_to_slide_matrix(read_alignment_csv(alignment), bundle.pixel_size), None


@click.command("labels")
@click.option(
    "--xenium",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Xenium output folder.",
)
@click.option(
    "--h5ad",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="AnnData of counts (with --polygons), instead of --xenium.",
)
@click.option(
    "--polygons",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Nucleus polygons (GeoParquet, GeoJSON or vertex CSV), µm.",
)
@click.option(
    "--slide",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The H&E whole-slide image of the same section.",
)
@click.option("--mpp", type=float, default=None, help="Override the slide's µm/px.")
@click.option(
    "--alignment",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="10x *_he_imagealignment.csv (H&E px -> morphology px).",
)
@click.option(
    "--keypoints",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Xenium Explorer keypoints CSV (fixedX,fixedY,alignmentX,...).",
)
@click.option(
    "--matrix",
    "matrix_text",
    default=None,
    help="Affine ST µm -> slide level-0 px as 'a,b,c,d,e,f' (x' = ax+by+c).",
)
@_apply(typing_options)
@click.option("--no-refine", is_flag=True, help="Skip automatic refinement from H&E nuclei.")
@click.option(
    "--h-weight",
    is_flag=True,
    help="Weight each polygon by the hematoxylin under it vs around it; polygons off their "
    "nucleus get a low weight and become unknown.",
)
@click.option("--min-counts", type=int, default=10, show_default=True,
              help="QC: drop cells with fewer gene counts (controls excluded).")  # fmt: skip
@click.option("--min-genes", type=int, default=3, show_default=True,
              help="QC: drop cells with fewer genes detected.")  # fmt: skip
@click.option("--min-area", type=float, default=5.0, show_default=True,
              help="QC: smallest nucleus area kept, µm².")  # fmt: skip
@click.option("--max-area", type=float, default=400.0, show_default=True,
              help="QC: largest nucleus area kept, µm².")  # fmt: skip
@click.option("--warn-matched", type=float, default=0.6, show_default=True,
              help="Warn when fewer ST nuclei than this fraction lie within 3 µm of an H&E "
                   "nucleus.")  # fmt: skip
@click.option("--warn-residual", type=float, default=2.5, show_default=True,
              help="Warn when the median ST-to-H&E nucleus distance exceeds this many µm.")  # fmt: skip
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output LabelSet (GeoParquet); the QC figure goes beside it (NAME.qc.png).",
)
@click.option(
    "--qupath",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write QuPath GeoJSON (.geojson, or .zip for large slides).",
)
def labels(
    xenium,
    h5ad,
    polygons,
    slide,
    mpp,
    alignment,
    keypoints,
    matrix_text,
    panel,
    reference,
    reference_key,
    method,
    taxonomy,
    min_confidence,
    no_refine,
    h_weight,
    min_counts,
    min_genes,
    min_area,
    max_area,
    warn_matched,
    warn_residual,
    out,
    qupath,
):
    """Build training labels: ST nuclei on the H&E slide, classed by expression; draw the
    registration QC and class map (NAME.qc.png) and warn when the registration looks weak."""
    from wsi_stnuc.classes import load_taxonomy
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.st.labels import build_labelset, write_labelset

    if (xenium is None) == (h5ad is None):
        raise click.UsageError("give either --xenium DIR or --h5ad FILE --polygons FILE")
    if xenium is not None:
        from wsi_stnuc.st.xenium import read_xenium

        bundle = read_xenium(xenium)
    else:
        if polygons is None:
            raise click.UsageError("--h5ad needs --polygons")
        from wsi_stnuc.st.generic import read_anndata_polygons

        bundle = read_anndata_polygons(h5ad, polygons)
    how = _method(method, reference)
    ref = _read_h5ad(reference) if reference is not None else None
    tax = load_taxonomy(taxonomy)
    a, kp_resid = _matrix(bundle, alignment, keypoints, matrix_text)
    if kp_resid is not None:
        click.echo(f"keypoint fit: median residual {kp_resid:.2f} µm")
    with open_slide(slide, mpp=mpp) as reader:
        gdf, report = build_labelset(
            bundle,
            reader,
            a,
            tax,
            typing=how,
            panel=panel,
            reference=ref,
            min_confidence=min_confidence,
            refine=not no_refine,
            min_counts=min_counts,
            min_genes=min_genes,
            nucleus_area_um2=(min_area, max_area),
        )
        if h_weight:
            _apply_h_weight(gdf, reader, min_confidence, report, tax.classes)
        qc_png = out.with_name(out.name.removesuffix(".parquet") + ".qc.png")
        warnings = _registration_qc(reader, bundle, gdf, tax.classes, a, report, qc_png,
                                    warn_matched, warn_residual)  # fmt: skip
    extra = {"source": str(bundle.source), "slide": str(slide), "report": report.to_dict()}
    write_labelset(gdf, out, tax.classes, extra=extra)
    click.echo(str(report))
    for line in warnings:
        click.secho(f"WARNING: {line}", fg="yellow")
    click.echo(f"wrote {len(gdf)} labelled nuclei -> {out}; QC figure -> {qc_png}")
    if qupath is not None:
        from wsi_stnuc.st.review import write_labelset_qupath

        write_labelset_qupath(gdf, qupath, tax.classes)
        click.echo(f"wrote QuPath GeoJSON -> {qupath} (review it, then: wsi-stnuc review)")


def _apply_h_weight(gdf, reader, min_confidence, report, classes) -> None:
    """Weight polygons by the hematoxylin under them; the report recounts the classes so what
    is printed is what the file holds."""
    from wsi_stnuc.formats import LabelCols as L
    from wsi_stnuc.taxonomy.label_confidence import label_weights

    lw = label_weights(gdf, reader, min_confidence=min_confidence)
    for col in lw.columns.drop("h_support"):  # weight, class, class probabilities
        gdf[col] = lw[col].to_numpy()
    report.recount_classes(gdf, classes)
    click.echo(f"H&E support: mean polygon weight {gdf[L.WEIGHT].mean():.2f}; "
               f"{report.off_nucleus} polygons off their nucleus -> unknown")  # fmt: skip


def _registration_qc(reader, bundle, gdf, classes, before, report, png, min_matched,
                     max_residual) -> list[str]:  # fmt: skip
    """Measure the registration, draw the QC figure, record it in the report; the warnings."""
    import numpy as np

    from wsi_stnuc.st.qc_figures import write_labels_qc
    from wsi_stnuc.st.registration_qc import registration_warnings

    after = np.asarray(report.matrix)
    qc, _ = write_labels_qc(png, reader, bundle.nuclei, gdf, classes, before, after)
    report.registration_qc = qc.to_dict()
    return registration_warnings(qc, min_matched=min_matched, max_residual_um=max_residual)


@click.command("review")
@click.argument("edited", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The LabelSet the QuPath file was made from (labels --qupath).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output: the reviewed LabelSet (GeoParquet).",
)
def review(edited, labels_path, out):
    """Merge a pathologist's QuPath edits into a LabelSet. EDITED is QuPath's export of the
    objects (File > Export objects as GeoJSON) of a LabelSet opened from `labels --qupath`:
    deleted nuclei are removed, reclassified ones take the new class at full weight
    (source = reviewed), drawn ones are added (source = manual)."""
    from wsi_stnuc.export.geoparquet import read_geoparquet_metadata
    from wsi_stnuc.st.labels import read_labelset, write_labelset
    from wsi_stnuc.st.review import merge_review, read_review

    gdf, classes = read_labelset(labels_path)
    edits = read_review(edited, classes)
    merged, report = merge_review(gdf, classes, edits, source=edited)
    meta = read_geoparquet_metadata(labels_path)
    extra = {k: v for k, v in meta.items() if k not in ("kind", "classes")}
    extra["review"] = {"edited": str(edited), "labels": str(labels_path),
                       **{k: v for k, v in vars(report).items()}}  # fmt: skip
    write_labelset(merged, out, classes, extra=extra)
    click.echo(str(report))
    click.echo(f"wrote {len(merged)} labelled nuclei -> {out}")


COMMANDS = [celltype, labels, review]
