"""Training: LabelSet -> per-tile targets, augmentation, the zarr patch dataset, the trainer."""
