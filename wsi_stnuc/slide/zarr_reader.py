"""zarr / OME-Zarr backend: NGFF 0.4 (zarr v2) and 0.5 (zarr v3, attrs under ``ome``).

Levels are the ``multiscales[0].datasets`` in order. Pixel size comes from each level-0
``coordinateTransformations`` ``scale`` on the x/y axes and the axes' ``unit``; a missing unit
means the scale is not physical, so the slide then needs ``--mpp``. A bare zarr array (no
multiscales) is read as one level with axes ``yxc`` (last dim 3/4) or ``cyx``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import Slide
from wsi_stnuc.slide.base import MppLike, SlideReader, check_levels
from wsi_stnuc.slide.metadata import parse_float, um_per_unit

# where convert.py keeps source facts that NGFF has no field for
WSI_STNUC_ATTR = "wsi_stnuc"


def _multiscales(attrs: dict) -> list | None:
    if Slide.OME_ZARR_MULTISCALES in attrs:
        return attrs[Slide.OME_ZARR_MULTISCALES]
    return attrs.get("ome", {}).get(Slide.OME_ZARR_MULTISCALES)


def _axes_names(axes: list) -> str:
    return "".join((a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes)


class ZarrReader(SlideReader):
    """A slide stored as an OME-Zarr multiscale image (or a single zarr array)."""

    backend = "zarr"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        super().__init__(path, mpp)
        import zarr

        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as exc:  # zarr raises many types for a non-zarr folder
            raise InputError(self.path, f"not a readable zarr store ({exc})") from exc
        self._attrs = dict(node.attrs)
        self._scale0: list[float] | None = None
        self._units: dict[str, str | None] = {}
        if isinstance(node, zarr.Array):
            self._arrays = [node]
            self._axes = "yxc" if node.ndim == 3 and node.shape[-1] in (3, 4) else "cyx"
        else:
            self._arrays, self._axes = self._open_multiscales(node)
        if sorted(self._axes.replace("t", "").replace("z", "")) != ["c", "x", "y"]:
            raise InputError(self.path, f"unsupported axes {self._axes!r} (need c, y, x)")
        for arr in self._arrays:
            if arr.ndim != len(self._axes):
                raise InputError(
                    self.path, f"array {arr.path!r} has {arr.ndim} dims, axes say {self._axes!r}"
                )
        c = self._axes.index("c")
        if self._arrays[0].shape[c] not in (1, 3, 4):
            raise InputError(self.path, f"need 1, 3 or 4 channels, got {self._arrays[0].shape[c]}")
        yi, xi = self._axes.index("y"), self._axes.index("x")
        self._dims = check_levels(self.path, [(a.shape[xi], a.shape[yi]) for a in self._arrays])

    def _open_multiscales(self, group) -> tuple[list, str]:
        multiscales = _multiscales(self._attrs)
        if not multiscales:
            raise InputError(self.path, "zarr group has no OME-Zarr 'multiscales' metadata")
        ms = multiscales[0]
        try:
            axes = ms.get("axes") or ["t", "c", "z", "y", "x"]  # NGFF < 0.4 fixed 5D order
            names = _axes_names(axes)
            self._units = {a["name"].lower(): a.get("unit") for a in axes if isinstance(a, dict)}
            arrays = [group[d["path"]] for d in ms["datasets"]]
            for transform in ms["datasets"][0].get("coordinateTransformations", []):
                if transform.get("type") == "scale":
                    self._scale0 = [float(v) for v in transform["scale"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(self.path, f"malformed OME-Zarr multiscales metadata ({exc})") from exc
        return arrays, names

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    @property
    def properties(self) -> dict[str, str]:
        props = {"zarr.axes": self._axes}
        for key, value in self._attrs.items():
            props[f"zarr.{key}"] = json.dumps(value) if not isinstance(value, str) else value
        return props

    @property
    def vendor(self) -> str | None:
        return self._attrs.get(WSI_STNUC_ATTR, {}).get("vendor") or "ome-zarr"

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._attrs.get(WSI_STNUC_ATTR, {}).get("objective_power"))

    def _native_mpp(self) -> tuple[float, float] | None:
        if self._scale0 is None or len(self._scale0) != len(self._axes):
            return None
        out = []
        for axis in ("x", "y"):
            per_unit = um_per_unit(self._units.get(axis))
            scale = self._scale0[self._axes.index(axis)]
            if per_unit is None or scale <= 0:
                return None
            out.append(scale * per_unit)
        return (out[0], out[1])

    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        index = []
        for axis in self._axes:
            index.append(
                {"y": slice(y, y + height), "x": slice(x, x + width), "c": slice(None)}.get(axis, 0)
            )
        try:
            block = np.asarray(self._arrays[level][tuple(index)])
        except Exception as exc:  # codec/IO errors from a damaged chunk
            raise InputError(self.path, f"cannot read level {level} chunks ({exc})") from exc
        kept = [a for a in self._axes if a in "cyx"]
        block = np.moveaxis(block, kept.index("c"), -1)
        if kept.index("y") > kept.index("x"):
            block = block.swapaxes(0, 1)
        if block.shape[2] == 1:
            block = np.repeat(block, 3, axis=2)
        if block.dtype == np.uint16:
            block = block // 257
        return np.ascontiguousarray(block[..., :3], dtype=np.uint8)

    def close(self) -> None:
        # zarr local stores hold no open file handles between reads
        self._arrays = []
