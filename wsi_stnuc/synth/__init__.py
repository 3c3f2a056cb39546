"""Synthetic and semi-synthetic paired bundles (H&E slide + Xenium output)."""
