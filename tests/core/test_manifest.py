"""The release manifest: loading, validation (and agreement with the JSON Schema file), version selection, URLs."""

import copy
import json

import pytest

from lora_train.release.manifest import (
    SCHEMA_ID,
    SCHEMA_PATH,
    Manifest,
    ManifestError,
    ManifestFile,
    Release,
    dump_manifest,
    load_manifest,
    split_versioned_name,
    validate_manifest,
)

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "0123456789abcdef" * 4


def example() -> dict:
    return {
        "schema": SCHEMA_ID,
        "name": "pixelart_style",
        "title": "Pixel art style",
        "description": "Chunky pixels.",
        "base_model": "sd15",
        "trigger_words": ["pixelart", "8bit"],
        "recommended_weight": 0.8,
        "license": "CC-BY-4.0",
        "data_source": "own drawings",
        "mirrors": ["https://a.example/rel/", "https://b.example/mirror"],
        "releases": [
            {"version": 1, "date": "2026-01-02",
             "files": [{"name": "pixelart_style_v1.safetensors", "size": 10, "sha256": SHA_A}]},
            {"version": 3, "date": "2026-11-30",
             "files": [{"name": "pixelart_style_v3.safetensors", "size": 123, "sha256": SHA_C, "urls": []},
                       {"name": "pixelart_style_v3.zip", "size": 200, "sha256": SHA_B}]},
            {"version": 2, "date": "2026-06-01",
             "files": [{"name": "pixelart_style_v2.safetensors", "size": 11, "sha256": SHA_B,
                        "urls": ["https://cdn.example/x/pixelart_style_v2.safetensors", "files/v2.safetensors"]}]},
        ],
    }  # fmt: skip


def test_loads_json_text_bytes_and_file_with_releases_newest_first(tmp_path):
    text = json.dumps(example())
    path = tmp_path / "manifest.json"
    path.write_text(text)
    for source in (text, text.encode(), path, str(path)):
        manifest = load_manifest(source)
        assert manifest.name == "pixelart_style"
        assert manifest.versions == [3, 2, 1]
        assert manifest.trigger_words == ["pixelart", "8bit"]
        assert manifest.recommended_weight == 0.8
        assert manifest.releases[0].files[1] == ManifestFile("pixelart_style_v3.zip", 200, SHA_B, [])
    assert load_manifest(path).base_url == tmp_path.resolve().as_uri() + "/"
    assert load_manifest(text).base_url is None


@pytest.mark.parametrize(
    "asked", [None, "latest", 3, "3", "v3", "V3", "pixelart_style_v3", "pixelart_style_v3.safetensors"]
)
def test_select_latest_or_by_any_spelling_of_the_version(asked):
    release = load_manifest(json.dumps(example())).select(asked)
    assert release.version == 3
    assert release.weights.name == "pixelart_style_v3.safetensors"


def test_select_rolls_back_to_an_earlier_version():
    manifest = load_manifest(json.dumps(example()))
    assert manifest.select("pixelart_style_v1").files[0].sha256 == SHA_A
    assert manifest.select(2).date == "2026-06-01"


def test_select_unknown_version_lists_available_ones():
    manifest = load_manifest(json.dumps(example()))
    with pytest.raises(ManifestError, match=r"no version 7.*available: v3, v2, v1"):
        manifest.select(7)
    with pytest.raises(ManifestError, match="not a version"):
        manifest.select("newest")


def test_file_urls_mirrors_in_order_then_file_override_and_relative_resolution():
    manifest = load_manifest(json.dumps(example()), base_url="https://host.example/releases/manifest.json")
    v3 = manifest.select(3)
    assert manifest.file_urls(v3, v3.files[0]) == [
        "https://a.example/rel/pixelart_style_v3.safetensors",
        "https://b.example/mirror/pixelart_style_v3.safetensors",
    ]
    v2 = manifest.select(2)
    assert manifest.file_urls(v2, v2.files[0]) == [
        "https://cdn.example/x/pixelart_style_v2.safetensors",
        "https://host.example/releases/files/v2.safetensors",
    ]


def test_relative_mirror_resolves_against_the_manifest_file_folder(tmp_path):
    data = example()
    data["mirrors"] = ["./"]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    manifest = load_manifest(path)
    v3 = manifest.select()
    assert manifest.file_urls(v3, v3.files[0]) == [(tmp_path / "pixelart_style_v3.safetensors").resolve().as_uri()]
    with pytest.raises(ManifestError, match="needs a base_url"):
        load_manifest(json.dumps(data)).file_urls(v3, v3.files[0])


def test_dump_is_stable_sorted_and_round_trips():
    manifest = load_manifest(json.dumps(example()))
    text = dump_manifest(manifest)
    assert text == dump_manifest(load_manifest(text))
    assert text.endswith("\n")
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert [r["version"] for r in data["releases"]] == [3, 2, 1]
    assert "base_url" not in data


def test_dump_of_dataclasses_built_in_code():
    files = [ManifestFile("stripe_style_v1.safetensors", 5, SHA_A)]
    manifest = Manifest(name="stripe_style", releases=[Release(1, "2026-02-03", files)])
    assert load_manifest(dump_manifest(manifest)).select().files[0].sha256 == SHA_A
    manifest.name = "Bad Name"
    with pytest.raises(ManifestError, match="name: must be lowercase"):
        dump_manifest(manifest)


def _broken(change) -> dict:
    data = copy.deepcopy(example())
    change(data)
    return data


BAD_CASES = {
    "unknown schema version": (lambda d: d.update(schema="lora-release/2"), "unknown schema version 'lora-release/2'"),
    "foreign schema": (lambda d: d.update(schema="civitai"), "schema: must be 'lora-release/1'"),
    "no schema": (lambda d: d.pop("schema"), "schema: missing"),
    "bad name": (lambda d: d.update(name="Pixel-Art"), "name: must be lowercase"),
    "typo field": (lambda d: d.update(mirror=[]), "mirror: unknown field; did you mean 'mirrors'"),
    "short sha": (lambda d: d["releases"][0]["files"][0].update(sha256="abc"), r"releases\[0\].files\[0\].sha256"),
    "upper sha": (lambda d: d["releases"][1]["files"][0].update(sha256="A" * 64), r"releases\[1\].files\[0\].sha256"),
    "negative size": (lambda d: d["releases"][0]["files"][0].update(size=-1), r"files\[0\].size"),
    "path in name": (lambda d: d["releases"][0]["files"][0].update(name="../x.safetensors"), r"files\[0\].name"),
    "no files": (lambda d: d["releases"][0].update(files=[]), r"releases\[0\].files: must be a non-empty list"),
    "version zero": (lambda d: d["releases"][0].update(version=0), r"releases\[0\].version"),
    "duplicate version": (lambda d: d["releases"][0].update(version=3), "version 3 listed twice"),
    "bad date": (lambda d: d["releases"][0].update(date="2026-13-01"), r"releases\[0\].date"),
    "no releases": (lambda d: d.update(releases=[]), "releases: must be a non-empty list"),
    "ftp mirror": (lambda d: d["mirrors"].append("ftp://x/"), r"mirrors\[2\]: URL scheme 'ftp'"),
    "weight string": (lambda d: d.update(recommended_weight="0.8"), "recommended_weight"),
    "trigger not list": (lambda d: d.update(trigger_words="pixelart"), "trigger_words: must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_invalid_manifest_raises_naming_the_field(case):
    change, message = BAD_CASES[case]
    with pytest.raises(ManifestError, match=message):
        load_manifest(json.dumps(_broken(change)))


def test_validate_reports_every_problem_at_once():
    data = _broken(lambda d: (d.update(name="X"), d["releases"][0].update(date="soon"), d["mirrors"].append(3)))
    problems = validate_manifest(data)
    assert len(problems) == 3, problems
    assert validate_manifest(example()) == []


def test_not_json_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(b"{not json")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.json")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest(b"[1, 2]")


def test_json_schema_file_agrees_with_the_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(example())) == []
    # every case the Python validator refuses, the schema refuses too (except calendar checks and duplicates,
    # which JSON Schema cannot express without the optional "format" assertion)
    schema_blind = {"bad date", "duplicate version"}
    for case, (change, _) in BAD_CASES.items():
        errors = list(validator.iter_errors(_broken(change)))
        assert bool(errors) != (case in schema_blind), case


def test_versioned_name_convention():
    assert split_versioned_name("pixelart_style_v3") == ("pixelart_style", 3)
    assert split_versioned_name("pixel2_style_v12") == ("pixel2_style", 12)
    for bad in ("pixelart_style", "Pixelart_v1", "pixel__art_v1", "pixelart_v0", "_x_v1", "pixelart_v1a"):
        assert split_versioned_name(bad) is None, bad
