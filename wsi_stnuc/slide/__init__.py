"""Whole-slide images: readers behind one protocol, tissue detection, tiling, writing.

``open_slide(path)`` returns a :class:`SlideReader`; see ``base.py`` for the coordinate
contract and ``registry.py`` for how a backend is chosen.
"""

from wsi_stnuc.slide.base import SlideReader
from wsi_stnuc.slide.registry import available_backends, open_slide

__all__ = ["SlideReader", "available_backends", "open_slide"]
