"""Post-processing speed: the old whole-tile watershed vs ``heads_to_instances``, same heads.

    python benchmarks/bench_postprocess.py [--sizes 320 1024] [--repeats 20] [--seed 0]

Heads are trained-like (``--sizes``): touching discs (nuclei of 4-10 px radius at 0.5 µm/px, ~35 % of the
tile covered, many in clumps) turned into a smoothed, noisy foreground probability, noisy
HoVer maps (``targets.hv_maps``) and class probabilities; plus untrained-like heads at the
smallest size (foreground everywhere, as from the untrained net of ``bench_infer.py``). Both implementations run
interleaved on the same heads in one process (the machine may be shared, so read the ratio,
not the absolute times), and the script checks that their outputs are identical.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from wsi_stnuc.model.postprocess import heads_to_instances
from wsi_stnuc.training.targets import hv_maps


def synthetic_heads(size: int, seed: int, n_classes: int = 3, density: float = 0.003):
    """``(np_prob, hv, tp_prob)`` of a ``size`` x ``size`` tile of touching discs."""
    rng = np.random.default_rng(seed)
    n = max(1, int(density * size * size))
    centres = rng.uniform(-8, size + 8, (n, 2))
    # clumps: some nuclei sit next to another one
    near = rng.random(n) < 0.3
    centres[near] = centres[rng.integers(0, n, near.sum())] + rng.normal(0, 7, (near.sum(), 2))
    radius = rng.uniform(4, 10, n)
    rr, cc = np.indices((size, size), dtype=np.float32)
    best = np.full((size, size), np.inf, np.float32)
    inst = np.zeros((size, size), np.int32)
    for k, ((r, c), rad) in enumerate(zip(centres, radius, strict=True)):
        lo_r, hi_r = max(int(r - rad - 1), 0), min(int(r + rad + 2), size)
        lo_c, hi_c = max(int(c - rad - 1), 0), min(int(c + rad + 2), size)
        if lo_r >= hi_r or lo_c >= hi_c:
            continue
        sl = np.s_[lo_r:hi_r, lo_c:hi_c]
        d = np.hypot(rr[sl] - r, cc[sl] - c) / rad
        win = (d <= 1) & (d < best[sl])
        best[sl][win] = d[win]
        inst[sl][win] = k + 1
    inst, _, _ = relabel_sequential(inst)
    fg = (inst > 0).astype(np.float32)
    np_prob = np.clip(ndi.gaussian_filter(fg, 1.0) + rng.normal(0, 0.08, fg.shape), 0, 1)
    hv = hv_maps(inst) + rng.normal(0, 0.05, (2, size, size)).astype(np.float32)
    cls = rng.integers(1, n_classes + 1, int(inst.max()) + 1)
    cls[0] = 0
    tp = rng.random((n_classes + 1, size, size)).astype(np.float32) * 0.3
    tp[cls[inst], rr.astype(int), cc.astype(int)] += 1.0
    tp /= tp.sum(0, keepdims=True)
    return np_prob.astype(np.float32), np.clip(hv, -1, 1).astype(np.float32), tp


def untrained_heads(size: int, seed: int, n_classes: int = 3):
    """Heads like an untrained network's (what ``bench_infer.py`` runs): foreground
    probability just above 0.5 everywhere, weak smooth HV and class maps."""
    rng = np.random.default_rng(seed)

    def smooth(*shape):
        return ndi.gaussian_filter(rng.normal(0, 1, shape), (0,) * (len(shape) - 2) + (3, 3))

    np_prob = 0.53 + 0.01 * smooth(size, size)
    hv = 0.05 * smooth(2, size, size)
    tp = np.exp(0.1 * smooth(n_classes + 1, size, size))
    tp /= tp.sum(0, keepdims=True)
    return np_prob.astype(np.float32), hv.astype(np.float32), tp.astype(np.float32)


@functools.cache
def _reference_module():
    import importlib.util

    path = Path(__file__).parents[1] / "tests" / "model" / "test_postprocess_reference.py"
    spec = importlib.util.spec_from_file_location("postprocess_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_heads_to_instances(*heads):
    """The plain whole-tile algorithm the production code replaced; its one copy lives in the
    test that checks the two agree."""
    return _reference_module()._reference(*heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[320, 1024])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = [("trained-like", size, synthetic_heads) for size in args.sizes]
    cases.append(("untrained-like", min(args.sizes), untrained_heads))
    for kind, size, make in cases:
        heads = [make(size, args.seed + i) for i in range(4)]
        old_t, new_t = [], []
        n_inst = 0
        for i in range(args.repeats):
            h = heads[i % len(heads)]
            t = time.perf_counter()
            old = reference_heads_to_instances(*h)
            old_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            new = heads_to_instances(*h)
            new_t.append(time.perf_counter() - t)
            if i < len(heads):
                np.testing.assert_array_equal(new[0], old[0])
                pd.testing.assert_frame_equal(new[1], old[1], check_exact=True)
                n_inst += len(new[1])
        old_ms, new_ms = 1e3 * np.median(old_t), 1e3 * np.median(new_t)
        print(
            f"{kind} {size}^2 tile ({n_inst / len(heads):.0f} nuclei): old {old_ms:7.2f} ms, "
            f"new {new_ms:7.2f} ms per tile (median of {args.repeats}), "
            f"new/old = {new_ms / old_ms:.2f} (outputs identical)"
        )


if __name__ == "__main__":
    main()
