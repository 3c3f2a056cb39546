"""CLI: ``wsi-stnuc infer`` — a thin shell over :func:`wsi_stnuc.inference.cohort.run_cohort`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("infer")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--model", "model_path", default=None, type=click.Path(path_type=Path),
    help="Trained wsi-stnuc checkpoint (.pt) or the name of a shipped model "
         "(`wsi-stnuc models`); default: the shipped default model.",
)  # fmt: skip
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (GeoParquet, QuPath GeoJSON, manifest, summary).")  # fmt: skip
@click.option("--resume", is_flag=True,
              help="Skip finished slides and continue partial ones where they stopped, if "
                   "made from the same file, model and settings (else recompute).")  # fmt: skip
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="µm/px at level 0 for slides and images that state none (a manifest's mpp "
                   "column wins); a file's own value is kept.")  # fmt: skip
@click.option("--force-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="µm/px at level 0 for every slide, replacing the files' own values "
                   "(recorded as forced in the outputs).")  # fmt: skip
@click.option("--qupath/--no-qupath", default=True, show_default=True,
              help="Also write QuPath GeoJSON.")  # fmt: skip
@click.option("--qupath-cells", is_flag=True,
              help="Export cells (nuclei grown by 5 µm within Voronoi regions) for QuPath.")  # fmt: skip
@click.option("--zip", "zipped", flag_value=True, default=None,
              help="Zip the GeoJSON (default: zipped above 200k nuclei).")  # fmt: skip
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask scheduler (tcp://host:8786), one slide per task.")  # fmt: skip
@click.option("--local-cluster", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run on a local Dask cluster of N workers (one per GPU on GPU machines).")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--core", type=click.IntRange(min=16), default=512, show_default=True,
              help="Tile core size (model pixels).")  # fmt: skip
@click.option("--halo", type=click.IntRange(min=1), default=None,
              help="Tile halo (model pixels); must hold the largest nucleus (--max-area). "
                   "Default: the smallest that does.")  # fmt: skip
@click.option("--min-area", "min_area_um2", type=click.FloatRange(min=0), default=None,
              help="Smallest nucleus kept, µm² (default: the model's, else 4).")  # fmt: skip
@click.option("--max-area", "max_area_um2", type=click.FloatRange(min=0, min_open=True),
              default=None,
              help="Largest nucleus kept, µm² (default: the model's, else 500).")  # fmt: skip
@click.option("--tissue/--no-tissue", default=True, show_default=True,
              help="Only process tiles that touch detected tissue.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Reader and post-processing workers per slide (default: up to 4).")  # fmt: skip
@click.option("--reader", type=click.Choice(["threads", "processes"]), default="threads",
              show_default=True,
              help="Decode tiles in threads or in processes (outside the interpreter lock: "
                   "for many-core GPU machines).")  # fmt: skip
def infer(
    inputs: tuple[str, ...],
    model_path: Path | None,
    out_dir: Path,
    resume: bool,
    mpp: float | None,
    force_mpp: float | None,
    qupath: bool,
    qupath_cells: bool,
    zipped: bool | None,
    scheduler: str | None,
    local_cluster: int | None,
    device: str,
    batch_size: int,
    core: int,
    halo: int | None,
    min_area_um2: float | None,
    max_area_um2: float | None,
    tissue: bool,
    workers: int | None,
    reader: str,
) -> None:
    """Segment and classify nuclei in slides: INPUTS are slide files, PNG/JPEG images, folders,
    globs or CSV manifests (columns: path, optional mpp and name). Exits with 1 if any slide
    failed or was held by another run, 2 on bad options (checked before any slide)."""
    from wsi_stnuc.inference.cohort import run_cohort
    from wsi_stnuc.inference.report import REPORT

    if scheduler and local_cluster:
        raise click.UsageError("--scheduler and --local-cluster are exclusive")
    result = run_cohort(
        list(inputs), resolve_model(model_path), out_dir,
        resume=resume, scheduler=scheduler, local_cluster=local_cluster, mpp=mpp,
        force_mpp=force_mpp, device=device, batch_size=batch_size, core=core, halo=halo,
        min_area_um2=min_area_um2, max_area_um2=max_area_um2, tissue=tissue, qupath=qupath,
        qupath_zip=zipped, qupath_cells=qupath_cells, workers=workers, reader=reader,
    )  # fmt: skip
    n_ok = sum(r["status"] == "ok" for r in result.rows)
    click.echo(f"{n_ok} of {len(result.rows)} slides done; manifest: {result.manifest}; "
               f"report (open in a browser): {result.manifest.with_name(REPORT)}")  # fmt: skip
    for row in result.rows:
        if row["status"] == "failed":
            click.secho(f"failed: {row['path']}: {row['error']}", fg="red", err=True)
        elif row["status"] == "locked":
            click.secho(f"skipped, another run is writing it: {row['path']}: {row['error']}",
                        fg="yellow", err=True)  # fmt: skip
    for line in result.write_errors:
        click.secho(f"error: {line}", fg="red", err=True)
    if result.n_failed or result.n_locked or result.write_errors:
        raise SystemExit(1)


def resolve_model(model_path: Path | None) -> Path:
    """The checkpoint to use: a file, a shipped model's name, or (None) the shipped default,
    which is announced; loading and checking it is the library's job
    (``inference.cohort.check_run``)."""
    from wsi_stnuc.errors import InputError
    from wsi_stnuc.model import zoo

    path, shipped = zoo.resolve_model(model_path)
    if shipped is not None:
        card = zoo.model_card(shipped)
        default = " (the default; choose another with --model)" if model_path is None else ""
        click.echo(f"model: shipped {shipped}{default}: {card.get('summary', '')}", err=True)
    if not path.is_file():
        raise InputError(path, "model checkpoint not found")
    return path


COMMANDS = [infer]
