"""Parse physical pixel size and vendor fields from the many places slides keep them.

Sources, as the readers consult them: OpenSlide's ``openslide.mpp-x/-y``, Aperio's
``MPP = 0.499`` in the ImageDescription, OME-XML ``PhysicalSizeX/Y`` with their units, and the
TIFF resolution tags (pixels per centimetre or inch). Everything is returned in µm per pixel.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

# µm per unit for length units found in OME-XML, OME-Zarr axes and TIFF tags
_UM_PER_UNIT = {
    "m": 1e6,
    "meter": 1e6,
    "cm": 1e4,
    "centimeter": 1e4,
    "mm": 1e3,
    "millimeter": 1e3,
    "µm": 1.0,
    "μm": 1.0,  # GREEK SMALL LETTER MU, which some writers use instead of MICRO SIGN
    "um": 1.0,
    "micron": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "in": 25400.0,
    "inch": 25400.0,
}
# TIFF ResolutionUnit codes (2 inch, 3 centimetre; 4/5 are tifffile's mm/µm extensions)
_TIFF_UNIT_CODES = {"2": "inch", "3": "centimeter", "4": "millimeter", "5": "micrometer"}


def parse_float(value: object) -> float | None:
    """``float(value)`` if it is a finite number, else None."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def um_per_unit(unit: str | None) -> float | None:
    """µm in one ``unit`` (case-insensitive; None or unknown -> None)."""
    if unit is None:
        return None
    key = str(unit).strip()
    return _UM_PER_UNIT.get(key, _UM_PER_UNIT.get(key.lower()))


def _resolution_value(value: object) -> float | None:
    if isinstance(value, tuple | list) and len(value) == 2:
        num, den = (parse_float(v) for v in value)
        return num / den if num and den else None
    return parse_float(value)


def mpp_from_resolution(xres: object, yres: object, unit: object) -> tuple[float, float] | None:
    """µm/px from TIFF X/YResolution (pixels per unit; float or (num, den)) and ResolutionUnit.

    A missing unit or unit NONE (1) means the numbers carry no physical size: returns None.
    """
    if unit is None:
        return None
    name = str(getattr(unit, "value", unit)).strip().lower()
    name = _TIFF_UNIT_CODES.get(name, name)
    per_unit = um_per_unit(name)
    rx, ry = _resolution_value(xres), _resolution_value(yres)
    if per_unit is None or not rx or not ry or rx <= 0 or ry <= 0:
        return None
    mx, my = per_unit / rx, per_unit / ry
    # scanners write resolution 1 or 72 dpi when they mean "unknown"; not a real H&E mpp
    if mx > 100 or my > 100:
        return None
    return (mx, my)


def parse_aperio_description(description: str) -> dict[str, str]:
    """Key/value fields of an Aperio ImageDescription (``... |AppMag = 20|MPP = 0.499``)."""
    fields = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def aperio_mpp(fields: dict[str, str]) -> tuple[float, float] | None:
    """Aperio's ``MPP`` field (square pixels)."""
    mpp = parse_float(fields.get("MPP"))
    return (mpp, mpp) if mpp and mpp > 0 else None


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_ome_pixels(ome_xml: str) -> dict[str, str]:
    """Attributes of the first OME ``Pixels`` element and the first objective, as strings."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return {}
    out: dict[str, str] = {}
    for elem in root.iter():
        name = _strip_ns(elem.tag)
        if name == "Pixels" and "PhysicalSizeX" not in out:
            out.update({k: v for k, v in elem.attrib.items() if k.startswith("PhysicalSize")})
        elif name == "Objective" and "NominalMagnification" in elem.attrib:
            out.setdefault("NominalMagnification", elem.attrib["NominalMagnification"])
    return out


def ome_mpp(pixels: dict[str, str]) -> tuple[float, float] | None:
    """µm/px from OME ``PhysicalSizeX/Y`` and ``PhysicalSizeXUnit`` (default µm per the schema)."""
    values = []
    for axis in ("X", "Y"):
        size = parse_float(pixels.get(f"PhysicalSize{axis}"))
        per_unit = um_per_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or size <= 0 or per_unit is None:
            return None
        values.append(size * per_unit)
    return (values[0], values[1])


_MAG_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]?\s*$")


def parse_magnification(value: object) -> float | None:
    """``20``, ``"20"``, ``"20x"`` -> 20.0."""
    if value is None:
        return None
    match = _MAG_RE.match(str(value))
    return float(match.group(1)) if match else None
