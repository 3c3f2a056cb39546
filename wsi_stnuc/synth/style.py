"""How hard the synthetic H&E is: overlap, pale chromatin, stain and focus variation, debris.

``PaintStyle.clean()`` is the easy image of earlier versions (separate dark blobs on clean
pink: a hematoxylin threshold segments it almost perfectly). ``PaintStyle.hard()``, the
default, adds what makes real H&E hard for a threshold and that a network can learn around:

- touching and overlapping nuclei (the one on top hides part of the one below; the truth
  outline is the visible part, and the overlap is darker, as stacked chromatin is);
- pale vesicular chromatin in tumour nuclei (a rim and clumps, little in between);
- stain variation across the section (hematoxylin and eosin strength drift independently)
  and focus variation (patches out of focus);
- debris: small very dark specks and fragments that are not nuclei (no ST cell, no truth).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaintStyle"]


@dataclass(frozen=True)
class PaintStyle:
    """Knobs of :func:`wsi_stnuc.synth.painter.paint_he` and
    :func:`wsi_stnuc.synth.nuclei.sample_nuclei` (lengths in µm)."""

    max_overlap: float = 0.0  # largest overlap allowed, as a fraction of the smaller nucleus
    gap_um: float = 0.6  # with max_overlap 0: the smallest gap between outlines
    pale_factor: float = 1.0  # multiplies the tumour nuclei's hematoxylin (< 1: paler)
    pale_chromatin: float = 0.0  # extra clumped-chromatin amplitude of pale nuclei
    stain_cv: float = 0.0  # spatial std of the hematoxylin / eosin strength (fraction)
    defocus_fraction: float = 0.0  # share of the section out of focus
    defocus_blur_um: float = 1.2  # Gaussian blur there
    debris_per_mm2: float = 0.0  # dark specks and fragments per mm² of tissue

    @classmethod
    def clean(cls) -> PaintStyle:
        """Separate, evenly stained nuclei in focus, no debris."""
        return cls()

    @classmethod
    def hard(cls) -> PaintStyle:
        """Touching/overlapping nuclei, pale vesicular tumour nuclei, stain and focus drift,
        debris."""
        return cls(
            max_overlap=0.08,
            gap_um=0.0,
            pale_factor=0.7,
            pale_chromatin=0.4,
            stain_cv=0.18,
            defocus_fraction=0.25,
            defocus_blur_um=1.2,
            debris_per_mm2=1500.0,
        )
