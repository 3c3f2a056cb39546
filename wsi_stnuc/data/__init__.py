"""Shipped data files: marker panels and taxonomies (YAML)."""
