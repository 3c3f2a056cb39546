"""Slide identity and output names that depend only on the slide's own path."""

from __future__ import annotations

import os

from wsi_stnuc.inference.identity import SlideIdentity, output_name, safe_name, settings_key


def test_names_are_stable_and_unique(tmp_path):
    a = tmp_path / "a_b.svs"
    b = tmp_path / "a b.tif"
    (tmp_path / "sub").mkdir()
    c = tmp_path / "sub" / "a_b.svs"
    names = {output_name(p, p.stem) for p in (a, b, c)}
    assert len(names) == 3 and all(n.startswith("a_b-") for n in names)
    assert output_name(a, a.stem) == output_name(tmp_path / "." / "a_b.svs", "a_b")
    assert safe_name(output_name(b, "../../x y")) == output_name(b, "../../x y")


def test_identity_notices_a_changed_or_other_file(tmp_path):
    path = tmp_path / "s.tif"
    path.write_bytes(b"1234")
    ident = SlideIdentity.of(path)
    assert ident.path == str(path.resolve()) and ident.size == 4
    assert ident.differs(ident.to_dict()) is None
    os.utime(path, ns=(ident.mtime_ns + 10**9, ident.mtime_ns + 10**9))
    assert "changed" in SlideIdentity.of(path).differs(ident.to_dict())
    other = {**ident.to_dict(), "path": "/elsewhere/s.tif"}
    assert "another file" in ident.differs(other)
    assert ident.differs(None) == "no slide identity recorded"


def test_settings_key_is_canonical():
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})
