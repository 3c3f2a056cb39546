"""Synthetic and semi-synthetic paired bundles (H&E slide + Xenium output)."""

from wsi_stnuc.synth.bundle import SyntheticBundle, make_synthetic_bundle
from wsi_stnuc.synth.noise import STNoise, apply_st_noise
from wsi_stnuc.synth.xenium_writer import write_xenium_bundle, xenium_cell_ids

__all__ = [
    "STNoise",
    "SyntheticBundle",
    "apply_st_noise",
    "make_synthetic_bundle",
    "write_xenium_bundle",
    "xenium_cell_ids",
]
