"""The studies' one reader and writer of results files (cccl_lite.studies.results)."""

import json

from cccl_lite.studies import results


def test_load_takes_a_json_object_and_nothing_else(tmp_path):
    path = tmp_path / "r.json"
    assert results.load(path) is None  # no file yet
    for text in ('{"settings": {"a": 1}, "rows": [', "[1, 2]", "\xff\xfe", ""):
        path.write_bytes(text.encode("latin-1"))
        assert results.load(path) is None, text
    path.write_text('{"settings": {"a": 1}, "rows": []}')
    assert results.load(path) == {"settings": {"a": 1}, "rows": []}
    assert results.load(tmp_path) is None  # a folder


def test_held_compares_the_recorded_settings(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"settings": {"epochs": 3, "data": "x.h5"}, "rows": [1]}))
    assert results.held(path, {"epochs": 3, "data": "x.h5"})["rows"] == [1]
    assert results.held(path, {"epochs": 4, "data": "x.h5"}) is None
    # a study's own reading of old settings, and one that fails on an edited value
    assert results.held(path, {"epochs": 30}, lambda old, new: {"epochs": old["epochs"] * 10}
                        == new) is not None
    assert results.held(path, {"epochs": 3}, lambda old, new: old["missing"] == new) is None


def test_what_is_names_each_setting_that_differs(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"settings": {"epochs": 3, "data": "x.h5", "seed": 0}}))
    line = results.what_is(path, "diagnosis", {"epochs": 10, "data": "x.h5", "max_steps": 1})
    assert line == ("a diagnosis with other settings (epochs: 3 -> 10; max_steps: None -> 1; "
                    "seed: 0 -> None)")
    long = {"epochs": 3, "data": "y" * 100}
    assert "..." in results.what_is(path, "study", long) and len(results.what_is(
        path, "study", long)) < 120
    path.write_text("{")
    assert results.what_is(path, "diagnosis", {}).startswith("no diagnosis (not valid JSON")
    path.write_text("[]")
    assert results.what_is(path, "diagnosis", {}) == "no diagnosis (no settings)"


def test_write_puts_settings_then_provenance_then_the_records(tmp_path):
    path = tmp_path / "sub" / "r.json"
    out = results.write(path, {"rows": [1, 2], "settings": {"a": 1}, "provenance": "old"})
    text = path.read_text(encoding="utf-8")
    assert list(json.loads(text)) == ["settings", "provenance", "rows"]
    assert json.loads(text) == out and out["provenance"] != "old"
    assert {"commit", "date"} <= set(out["provenance"])
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    results.write(path, {"settings": {"λ": 0.5}})
    assert "λ" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
