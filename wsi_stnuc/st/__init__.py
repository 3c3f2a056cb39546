"""Spatial transcriptomics: read bundles, register to H&E, QC, cell typing, labels."""
