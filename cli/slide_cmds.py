"""CLI: ``wsi-stnuc info``, ``tissue`` and ``convert`` — thin shells over ``wsi_stnuc.slide``."""

from __future__ import annotations

import json
from pathlib import Path

import click

_BACKENDS = ["tifffile", "openslide", "zarr", "tiatoolbox"]

slide_argument = click.argument("slide", type=click.Path(path_type=Path))
mpp_option = click.option(
    "--mpp", type=float, default=None, help="Override the slide's µm/px at level 0."
)
backend_option = click.option(
    "--backend",
    type=click.Choice(_BACKENDS),
    default=None,
    help="Force a reader backend (default: chosen by file format).",
)


def slide_info(slide) -> dict:
    """Everything ``info`` reports, as plain JSON-able data."""
    try:
        mpp = list(slide.mpp)
    except ValueError:  # InputError: no mpp in the file and none given
        mpp = None
    width, height = slide.dimensions
    return {
        "path": str(slide.path),
        "backend": slide.backend,
        "width": width,
        "height": height,
        "mpp": mpp,
        "vendor": slide.vendor,
        "objective_power": slide.objective_power,
        "levels": [
            {"width": w, "height": h, "downsample": round(ds, 4)}
            for (w, h), ds in zip(slide.level_dimensions, slide.level_downsamples, strict=True)
        ],
        "associated_images": slide.associated_images,
    }


@click.command("info")
@slide_argument
@mpp_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(slide: Path, mpp: float | None, backend: str | None, as_json: bool) -> None:
    """Show a slide's size, pyramid levels, µm/px, vendor, objective and associated images."""
    from wsi_stnuc.slide.registry import open_slide

    with open_slide(slide, mpp=mpp, backend=backend) as reader:
        facts = slide_info(reader)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    mpp_text = (
        "unknown (pass --mpp)" if facts["mpp"] is None else "{:.4f} x {:.4f}".format(*facts["mpp"])
    )
    click.echo(f"{facts['path']}  [{facts['backend']}]")
    click.echo(f"  size       {facts['width']} x {facts['height']} px")
    click.echo(f"  mpp        {mpp_text} µm/px")
    click.echo(f"  vendor     {facts['vendor'] or '-'}")
    click.echo(f"  objective  {facts['objective_power'] or '-'}")
    for i, level in enumerate(facts["levels"]):
        click.echo(
            f"  level {i}    {level['width']} x {level['height']}  (downsample {level['downsample']:g})"
        )
    click.echo(f"  associated {', '.join(facts['associated_images']) or '-'}")


@click.command("tissue")
@slide_argument
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="GeoJSON file of tissue annotations (QuPath-readable, level-0 px).",
)
@mpp_option
@backend_option
@click.option("--thumb-mpp", type=float, default=8.0, show_default=True, help="Overview µm/px.")
@click.option(
    "--min-area",
    "min_area_um2",
    type=float,
    default=1e4,
    show_default=True,
    help="Drop tissue pieces smaller than this (µm²).",
)
def tissue(
    slide: Path,
    out: Path,
    mpp: float | None,
    backend: str | None,
    thumb_mpp: float,
    min_area_um2: float,
) -> None:
    """Detect tissue and write it as QuPath annotations."""
    import shapely

    from wsi_stnuc.export.qupath import write_qupath_annotations
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.slide.tissue import TISSUE_CLASS, TISSUE_COLOR, detect_tissue

    with open_slide(slide, mpp=mpp, backend=backend) as reader:
        found = detect_tissue(reader, thumb_mpp=thumb_mpp, min_area_um2=min_area_um2)
        mpp_x, mpp_y = reader.mpp
    write_qupath_annotations(found, out, class_name=TISSUE_CLASS, color=TISSUE_COLOR)
    n_parts = int(shapely.get_num_geometries(found)) if not found.is_empty else 0
    area_mm2 = found.area * mpp_x * mpp_y / 1e6
    click.echo(f"{out}: {n_parts} tissue region(s), {area_mm2:.2f} mm²")


@click.command("convert")
@slide_argument
@click.argument("out", type=click.Path(path_type=Path))
@mpp_option
@backend_option
@click.option("--chunk", type=int, default=512, show_default=True, help="Chunk side (px).")
@click.option("--workers", type=int, default=None, help="Dask threads (default: all cores).")
def convert(
    slide: Path, out: Path, mpp: float | None, backend: str | None, chunk: int, workers: int | None
) -> None:
    """Convert a slide to an OME-Zarr (NGFF 0.4) multiscale pyramid at OUT (a .zarr folder)."""
    from wsi_stnuc.slide.convert import convert_to_ome_zarr
    from wsi_stnuc.slide.registry import open_slide

    with open_slide(slide, mpp=mpp, backend=backend) as reader:
        convert_to_ome_zarr(reader, out, chunk=chunk, num_workers=workers)
    click.echo(f"wrote {out}")


COMMANDS = [info, tissue, convert]
