"""Package layouts medigan accepts, model file resolution and ``models/<model_id>/`` rewriting."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from _zipcraft import Entry, model_zip, package_zip

from medigan_iso.errors import PackageLayoutError
from medigan_iso.packages import ensure_package, rewrite_model_paths


def _zip_entry(tmp_path: Path, data: bytes, **kw: Any) -> Entry:
    archive = tmp_path / f"{hashlib.sha256(data).hexdigest()[:8]}.zip"
    archive.write_bytes(data)
    kw.setdefault("model_id", "00009_PGGAN_POLYP_PATCHES_W_MASKS")
    kw.setdefault("catalogue_dir", tmp_path)
    return Entry(package_link=str(archive), package_sha256=hashlib.sha256(data).hexdigest(), **kw)


@pytest.mark.parametrize("package_name", ["ProGAN-4ch", "00023", "00001_DCGAN_MMG_CALC_ROI"])
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "root"])
def test_both_zip_layouts_give_a_root_holding_init(
    home: Path, tmp_path: Path, package_name: str, nested: bool
) -> None:
    data = model_zip(package_name, nested=nested)
    pkg = ensure_package(_zip_entry(tmp_path, data, package_name=package_name), home=home)
    assert (pkg.root / "__init__.py").is_file()
    tree = home / "packages" / "trees" / pkg.sha256
    assert pkg.root == (tree / package_name if nested else tree)
    assert pkg.package_name == package_name
    assert pkg.model_file == pkg.root / "weights.npy"


def test_a_single_top_level_folder_with_another_name_is_accepted(home: Path, tmp_path: Path) -> None:
    data = model_zip("MALIGN_DCGAN_v2", nested=True)
    pkg = ensure_package(_zip_entry(tmp_path, data, package_name="MALIGN_DCGAN"), home=home)
    assert pkg.root.name == "MALIGN_DCGAN_v2"


def test_macos_metadata_folder_does_not_hide_the_layout(home: Path, tmp_path: Path) -> None:
    data = package_zip(
        {"pkg_x/__init__.py": b"", "pkg_x/weights.npy": b"w", "__MACOSX/pkg_x/._weights.npy": b"junk"}
    )
    assert ensure_package(_zip_entry(tmp_path, data, package_name="pkg"), home=home).root.name == "pkg_x"


def test_package_without_init_is_a_layout_error_listing_what_was_tried(home: Path, tmp_path: Path) -> None:
    data = package_zip({"ProGAN-4ch/model.py": b"", "README.md": b"hi"})
    with pytest.raises(PackageLayoutError) as info:
        ensure_package(_zip_entry(tmp_path, data, package_name="ProGAN-4ch"), home=home)
    err = info.value
    assert err.model_id == "00009_PGGAN_POLYP_PATCHES_W_MASKS"
    assert "__init__.py at the archive root" in err.reason
    assert "ProGAN-4ch/__init__.py" in err.reason
    assert err.path is not None and err.path.parent == home / "packages" / "trees"


@pytest.mark.parametrize(
    ("model_name", "extension", "stored_as"),
    [
        ("netG_T1toT2_checkpoint", ".pth.tar", "netG_T1toT2_checkpoint.pth.tar"),
        ("malign_mass_gen", "", "malign_mass_gen"),
        ("500", ".pt", "500.pt"),
        (
            "singan_seg_polyp/SinGAN-Generated/TrainedModels_1_clean/1/Gs",
            ".pth",
            "singan_seg_polyp/SinGAN-Generated/TrainedModels_1_clean/1/Gs.pth",
        ),
    ],
)
def test_model_file_joins_name_and_extension_verbatim(
    home: Path, tmp_path: Path, model_name: str, extension: str, stored_as: str
) -> None:
    data = model_zip("pkg", model_file=stored_as)
    entry = _zip_entry(tmp_path, data, package_name="pkg", model_name=model_name, extension=extension)
    pkg = ensure_package(entry, home=home)
    assert pkg.model_file == pkg.root.joinpath(*stored_as.split("/"))
    assert pkg.model_file.is_file()


def test_model_name_escaping_the_package_is_a_layout_error(home: Path, tmp_path: Path) -> None:
    entry = _zip_entry(
        tmp_path, model_zip("pkg"), package_name="pkg", model_name="../../etc/passwd", extension=""
    )
    with pytest.raises(PackageLayoutError) as info:
        ensure_package(entry, home=home)
    assert "'../../etc/passwd' is not a relative path inside the package" in info.value.reason
    assert info.value.model_id == entry.model_id


def test_package_code_is_never_imported(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    init = f"open({str(marker)!r}, 'w').close()\n".encode()
    data = package_zip({"pkg/__init__.py": init, "pkg/weights.npy": b"w"})
    pkg = ensure_package(_zip_entry(tmp_path, data, package_name="pkg"), home=home)
    assert (pkg.root / "__init__.py").read_bytes() == init
    assert not marker.exists()


def _custom_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _custom_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _custom_strings(item)]
    return []


def test_upstream_models_paths_in_custom_defaults_point_into_the_package(
    home: Path, tmp_path: Path, shared_fixtures: Path
) -> None:
    catalogue = json.loads((shared_fixtures / "medigan_global.json").read_text(encoding="utf-8"))
    rewritten = 0
    for model_id, raw in catalogue.items():
        execution = raw["execution"]
        custom = execution["generate_method"]["args"].get("custom", {})
        prefix = f"models/{model_id}"
        if not any(s.startswith(prefix) for s in _custom_strings(custom)):
            continue
        rewritten += 1
        entry = _zip_entry(
            tmp_path,
            model_zip(execution["package_name"], model_file="w.bin", extra={"images/a.png": b"png"}),
            model_id=model_id,
            package_name=execution["package_name"],
            model_name="w",
            extension=".bin",
            custom_defaults=custom,
        )
        pkg = ensure_package(entry, home=home)
        got = pkg.custom_defaults
        assert set(got) == set(custom)
        for key, value in custom.items():
            original = _custom_strings(value)
            new = _custom_strings(got[key])
            assert len(original) == len(new)
            for before, after in zip(original, new):
                if before.startswith(prefix):
                    assert after == str(pkg.root / before[len(prefix) + 1 :])
                else:
                    assert after == before
            if not isinstance(value, (str, list, dict)):
                assert got[key] == value
        assert not any(s.startswith("models/") for s in _custom_strings(dict(got)))
    assert rewritten >= 7  # the upstream models that ship inputs inside their package


def test_rewriting_walks_nested_values_and_leaves_other_strings(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    value = {
        "input_path": "models/00021_X/inputs/T1",
        "image_paths_input": ["models/00021_X/sample.png", "models/00021_X/sample.png"],
        "nested": {"deep": ("models/00021_X", 3)},
        "other_model": "models/00022_Y/sample.png",
        "prefix_only": "models/00021_XY/a.png",
        "size": 128,
        "flag": None,
    }
    got = rewrite_model_paths(value, model_id="00021_X", root=root)
    assert got == {
        "input_path": str(root / "inputs" / "T1"),
        "image_paths_input": [str(root / "sample.png")] * 2,
        "nested": {"deep": [str(root), 3]},
        "other_model": "models/00022_Y/sample.png",
        "prefix_only": "models/00021_XY/a.png",
        "size": 128,
        "flag": None,
    }
    assert value["image_paths_input"] == ["models/00021_X/sample.png"] * 2  # input untouched


def test_a_custom_default_climbing_out_of_the_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageLayoutError) as info:
        rewrite_model_paths({"p": "models/00003/../../../etc/passwd"}, model_id="00003", root=tmp_path)
    assert info.value.model_id == "00003"
    assert "points outside the package" in info.value.reason


@pytest.mark.parametrize("package_name", ["../other/pkg", "a/b", "..", "", "pkg\\x"])
def test_package_name_must_be_one_folder_name(home: Path, tmp_path: Path, package_name: str) -> None:
    entry = _zip_entry(tmp_path, model_zip("pkg", nested=False), package_name=package_name)
    with pytest.raises(PackageLayoutError) as info:
        ensure_package(entry, home=home)
    assert f"package_name {package_name!r} is not a single folder name" in info.value.reason


def test_a_leftover_extraction_of_the_same_package_is_cleaned_up(home: Path, tmp_path: Path) -> None:
    data = model_zip("pkg")
    sha = hashlib.sha256(data).hexdigest()
    stale = home / "packages" / "trees" / f".{sha}.tmp-killed"
    (stale / "pkg").mkdir(parents=True)
    (stale / "pkg" / "half.bin").write_bytes(b"half")
    stale.chmod(0o555)
    pkg = ensure_package(_zip_entry(tmp_path, data, package_name="pkg"), home=home)
    assert not stale.exists()
    assert sorted(p.name for p in (home / "packages" / "trees").iterdir()) == [sha]
    assert pkg.root == home / "packages" / "trees" / sha / "pkg"
