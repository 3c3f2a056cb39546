"""Whole-slide inference: the tile engine, ownership stitching, nucleus features, cohorts."""
