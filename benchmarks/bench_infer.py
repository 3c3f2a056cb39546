"""Whole-slide inference: end-to-end time vs model-forward-only time, throughput, peak memory.

    python benchmarks/bench_infer.py [--size 20000] [--rss-sizes 10000 40000]
                                     [--model-mpp 0.5] [--width 16] [--device auto]
                                     [--readers threads processes]

Slides are real pixels: the CMU-1-Small-Region H&E slide (or ``--source``, any slide or a
PNG/JPEG tile with ``--source-mpp``) mirror-tiled to the requested size
(`wsi_stnuc.slide.mosaic.mosaic_slide`, JPEG or ``--compression zlib`` pyramid), cached in
--workdir. The model is a real
(untrained, seeded) NucleiNet saved as a checkpoint and run through `checkpoint_segmenter`, so
the full post-processing, stitching, features and both exports are exercised.

Figures: forward-only seconds (the same tiles, streamed, timing only the network calls),
end-to-end seconds of `infer_slide`, the overhead ratio (goal <= 10 % on a GPU, where the
forward dominates and post-processing overlaps it), Mpx/s (model pixels of tile cores, and
level-0 pixels), and peak RSS of a child process per size (goal: 40k^2 / 10k^2 <= 1.2).
``--readers`` times the end-to-end run once per tile reader (``infer_slide(reader=...)``),
in the order given, on the same slide and model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from wsi_stnuc.io_utils import shared_data_dir

CMU = "slides/CMU-1-Small-Region.svs"


def build_slide(workdir: Path, size: int, args) -> Path:
    from wsi_stnuc.slide.mosaic import mosaic_slide

    source = args.source or shared_data_dir() / CMU
    tag = "" if args.source is None else f"{Path(source).stem}_"
    path = workdir / f"mosaic_{tag}{size}_{args.compression}.tif"
    if not path.exists():
        t = time.perf_counter()
        mosaic_slide(source, path, size, mpp=args.source_mpp, compression=args.compression)
        print(f"built {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def build_model(workdir: Path, mpp: float, width: int) -> Path:
    import torch

    from wsi_stnuc.classes import ClassTable
    from wsi_stnuc.model.checkpoint import save_checkpoint
    from wsi_stnuc.model.net import NucleiNet

    path = workdir / f"untrained_w{width}_mpp{mpp:g}.pt"
    if not path.exists():
        torch.manual_seed(0)
        classes = ClassTable.from_names(["epithelial", "inflammatory", "connective"])
        save_checkpoint(path, NucleiNet(classes.n_classes, width=width), classes=classes, mpp=mpp)
    return path


def forward_only(seg, slide_path: Path, core: int, halo: int, batch_size: int) -> dict:
    """Seconds spent in the network alone over the tissue tiles infer_slide would process."""
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.slide.tiling import stream_tiles, tile_grid
    from wsi_stnuc.slide.tissue import detect_tissue

    with open_slide(slide_path) as slide:
        grid = tile_grid(slide, seg.mpp, core=core, halo=halo, tissue=detect_tissue(slide))
        seconds, batch = 0.0, []
        for _, image in stream_tiles(slide, grid, max_in_flight=2 * batch_size):
            batch.append(image)
            if len(batch) == batch_size:
                t = time.perf_counter()
                seg.forward(np.stack(batch))
                seconds += time.perf_counter() - t
                batch = []
        if batch:
            t = time.perf_counter()
            seg.forward(np.stack(batch))
            seconds += time.perf_counter() - t
    return {"forward_s": seconds, "n_tiles": len(grid)}


def run_infer(model: Path, slide_path: Path, out: Path, args) -> dict:
    from wsi_stnuc.inference.infer import checkpoint_segmenter, infer_slide

    seg = checkpoint_segmenter(model, args.device, batch_size=args.batch_size)
    t = time.perf_counter()
    res = infer_slide(
        seg, slide_path, out, core=args.core, halo=args.halo, batch_size=args.batch_size,
        resume=False, progress=False, workers=args.workers, reader=args.reader,
    )  # fmt: skip
    return {"e2e_s": time.perf_counter() - t, "n_nuclei": res.n_nuclei, "n_tiles": res.n_tiles}


def child(args) -> None:
    """One end-to-end run in a fresh process; prints its result and peak RSS as JSON."""
    out = run_infer(Path(args.model), Path(args.slide), Path(args.out), args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def spawn(model: Path, slide: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--slide", str(slide),
           "--out", str(out), "--core", str(args.core), "--halo", str(args.halo),
           "--batch-size", str(args.batch_size), "--device", args.device,
           "--reader", args.reader]  # fmt: skip
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[10000, 40000])
    parser.add_argument("--model-mpp", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--core", type=int, default=512)
    parser.add_argument("--halo", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained checkpoint instead of the untrained model")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None,
                        help="reader / post-processing threads (default: infer_slide's)")  # fmt: skip
    parser.add_argument("--readers", nargs="+", default=["threads"],
                        choices=["threads", "processes"], help="tile readers to time")  # fmt: skip
    parser.add_argument("--reader", default="threads", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wsi_stnuc_bench"))
    parser.add_argument("--source", type=Path, default=None, help="slide or PNG/JPEG to tile")
    parser.add_argument("--source-mpp", type=float, default=None, help="µm/px of --source")
    parser.add_argument("--compression", default="jpeg", choices=["jpeg", "zlib"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.source is None and not (shared_data_dir() / CMU).exists():
        sys.exit(f"needs the real CMU slide at {shared_data_dir() / CMU}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        from wsi_stnuc.model.checkpoint import read_checkpoint

        model, meta = args.checkpoint, read_checkpoint(args.checkpoint)
        args.model_mpp = float(meta["mpp"])
        kind = f"trained {model.name} (width {meta['arch'].get('width')})"
    else:
        model = build_model(args.workdir, args.model_mpp, args.width)
        kind = f"untrained NucleiNet width {args.width}"
    print(f"model: {kind} at {args.model_mpp} µm/px; core {args.core} + halo {args.halo}, "
          f"batch {args.batch_size}", flush=True)  # fmt: skip

    from wsi_stnuc.inference.infer import checkpoint_segmenter

    slide = build_slide(args.workdir, args.size, args)
    seg = checkpoint_segmenter(model, args.device, batch_size=args.batch_size)
    fwd = forward_only(seg, slide, args.core, args.halo, args.batch_size)
    core_mpx = fwd["n_tiles"] * args.core**2 / 1e6
    from wsi_stnuc.slide.registry import open_slide

    with open_slide(slide) as opened:
        level0_mpx = core_mpx * (args.model_mpp / opened.mpp[0]) ** 2
    print(f"{args.size}^2 slide: {fwd['n_tiles']} tissue tiles")
    print(f"  forward only    {fwd['forward_s']:8.1f} s")
    for reader in args.readers:
        args.reader = reader
        e2e = spawn(model, slide, args.workdir / f"out_main_{reader}", args)
        overhead = e2e["e2e_s"] / fwd["forward_s"] - 1
        print(f"  end to end, {reader} reader: {e2e['e2e_s']:.1f} s (overhead {overhead:+.0%}), "
              f"{e2e['n_nuclei']:,} nuclei, {core_mpx / e2e['e2e_s']:.2f} model Mpx/s, "
              f"{level0_mpx / e2e['e2e_s']:.1f} level-0 Mpx/s", flush=True)  # fmt: skip
    args.reader = args.readers[0]
    rss = {}
    for size in args.rss_sizes:
        path = build_slide(args.workdir, size, args)
        rss[size] = spawn(model, path, args.workdir / f"out_{size}", args)
        print(f"  {size}^2: peak RSS {rss[size]['peak_rss_mb']:7.0f} MB, "
              f"{rss[size]['n_tiles']} tiles, {rss[size]['e2e_s']:.0f} s", flush=True)  # fmt: skip
    if len(rss) >= 2:
        lo, hi = min(rss), max(rss)
        ratio = rss[hi]["peak_rss_mb"] / rss[lo]["peak_rss_mb"]
        print(f"  peak RSS {hi}^2 / {lo}^2 = {ratio:.2f}")


if __name__ == "__main__":
    main()
