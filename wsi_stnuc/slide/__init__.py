"""Whole-slide images: readers behind one protocol, tissue detection, tiling, writing."""
