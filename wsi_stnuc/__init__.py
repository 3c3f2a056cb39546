"""wsi-stnuc: nucleus segmentation and classification in H&E whole-slide images,
supervised by cell-level spatial transcriptomics."""

__version__ = "0.1.0"
