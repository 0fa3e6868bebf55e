from __future__ import annotations

import medigan_iso
from medigan_iso import errors


def test_every_error_is_a_medigan_iso_error_and_exported() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.MediganIsoError)
        assert name.endswith("Error")
        assert getattr(medigan_iso, name) is cls


def test_unknown_model_error_lists_close_matches_and_is_a_lookup_error() -> None:
    err = errors.UnknownModelError("00099", ["00009", "00019"])
    assert isinstance(err, LookupError)
    assert err.model_id == "00099"
    assert err.close_matches == ["00009", "00019"]
    assert "did you mean 00009, 00019?" in str(err)


def test_validation_error_names_every_model_and_path() -> None:
    err = errors.CatalogueValidationError(
        "cat.json", [("00002", "/execution/image_size", "bad"), ("00001", "/selection", "missing")]
    )
    assert err.model_ids == ["00001", "00002"]
    assert "00002: /execution/image_size: bad" in str(err)
    assert "00001: /selection: missing" in str(err)
