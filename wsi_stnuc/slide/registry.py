"""Pick a reader backend for a slide file.

Order (first that opens the file wins; a failure falls through to the next):

====================================  ==============================================
input                                 backends tried
====================================  ==============================================
directory / ``.zarr`` / ``.ome.zarr``  zarr
``.tif .tiff .svs .ome.tif .ome.tiff``  tifffile, openslide, tiatoolbox
OpenSlide vendor formats               openslide, tiatoolbox
(``.ndpi .mrxs .scn .vms .vmu .bif
.svslide .dcm``)
``.png .jpg .jpeg`` (no pyramid)        image
anything else                          unsupported (InputError)
====================================  ==============================================

tifffile comes first for TIFF-like files because its zarr view decodes tiles in parallel
straight from the file; OpenSlide covers the vendor quirks tifffile does not (e.g. NDPI
restart markers, MRXS). Passing ``backend=`` forces one backend.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.base import MppLike, SlideReader

log = logging.getLogger(__name__)

# backend name -> (module, class); imported only when used
BACKENDS: dict[str, tuple[str, str]] = {
    "tifffile": ("wsi_stnuc.slide.tifffile_reader", "TifffileReader"),
    "openslide": ("wsi_stnuc.slide.openslide_reader", "OpenSlideReader"),
    "zarr": ("wsi_stnuc.slide.zarr_reader", "ZarrReader"),
    "tiatoolbox": ("wsi_stnuc.slide.tia_reader", "TiaReader"),
    "image": ("wsi_stnuc.slide.image_reader", "ImageReader"),
}
# the third-party package each backend needs
_REQUIRES = {
    "tifffile": "tifffile",
    "openslide": "openslide",
    "zarr": "zarr",
    "tiatoolbox": "tiatoolbox",
    "image": "PIL",
}
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf")
VENDOR_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@functools.cache
def _is_available(backend: str) -> bool:
    try:
        importlib.import_module(_REQUIRES[backend])
    except Exception:  # a broken native library shows up as OSError etc., not ImportError
        return False
    return True


def available_backends() -> list[str]:
    """Backends whose third-party package imports in this environment."""
    return [name for name in BACKENDS if _is_available(name)]


def candidate_backends(path: Path) -> list[str]:
    """Backends to try for ``path``, in order (see the module docstring)."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(ZARR_SUFFIXES):
        return ["zarr"]
    if name.endswith(TIFF_SUFFIXES):
        return ["tifffile", "openslide", "tiatoolbox"]
    if name.endswith(VENDOR_SUFFIXES):
        return ["openslide", "tiatoolbox"]
    if name.endswith(IMAGE_SUFFIXES):
        return ["image"]
    return []


def _load(backend: str) -> type[SlideReader]:
    module, cls = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)


def open_slide(
    path: str | Path,
    mpp: MppLike = None,
    backend: str | None = None,
    *,
    default_mpp: MppLike = None,
) -> SlideReader:
    """Open a whole-slide image with the first backend that can read it.

    ``mpp`` (µm/px at level 0, a number or an (x, y) pair) overrides the file's own value;
    ``default_mpp`` is used only where the file states none (``reader.mpp_source`` tells which).
    ``backend`` forces one of :data:`BACKENDS`. Raises InputError for a missing, unsupported
    or unreadable file, naming the file and what each backend said.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "slide file not found")
    if backend is not None:
        if backend not in BACKENDS:
            raise InputError(path, f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
        order = [backend]
    else:
        order = candidate_backends(path)
        if not order:
            raise InputError(
                path,
                "unsupported slide format; expected a TIFF/SVS/OME-TIFF, an OpenSlide vendor "
                f"format ({' '.join(VENDOR_SUFFIXES)}), an OME-Zarr folder or a PNG/JPEG image",
            )
    problems = []
    for name in order:
        if not _is_available(name):
            problems.append(f"{name}: not installed")
            continue
        try:
            reader = _load(name)(path, mpp=mpp)
        except InputError as exc:
            problems.append(f"{name}: {exc.problem}")
            continue
        log.debug("opened %s with %s", path, name)
        reader.fill_missing_mpp(default_mpp)
        return reader
    raise InputError(path, "cannot read slide; " + "; ".join(problems))
