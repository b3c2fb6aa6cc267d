"""Bad input gets a clear error naming the thing; nothing half-written looks complete."""
import json
import os
import shutil

import numpy as np
import pytest

import torch_grouper as tg


def test_missing_key_column_names_column_and_example(tmp_path):
    exs = [{"user": "a", "x": 1}] * 5 + [{"usr": "b", "x": 2}]
    with pytest.raises(tg.PartitionError, match=r"example 5: has no key column 'user' \(columns: usr, x\)"):
        tg.partition(exs, "user", tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_key_column_in_jsonl_names_file_and_byte(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"u": "a"}\n{"v": "b"}\n')
    with pytest.raises(tg.PartitionError, match=r"in\.jsonl: line at byte 11: has no key column 'u'"):
        tg.partition(p, "u", tmp_path / "o", progress=False)


def test_lone_surrogate_group_id(tmp_path):
    with pytest.raises(tg.PartitionError, match=r"example 1: group key '\\ud800' is not valid Unicode"):
        tg.partition([{"k": "a"}, {"k": "\ud800"}], "k", tmp_path / "o", progress=False)


@pytest.mark.parametrize("bad, what", [(None, "NoneType"), (["a"], "list"), (1.5, "float"), ({"a": 1}, "dict"),
                                       (True, "bool")])
def test_bad_key_values(tmp_path, bad, what):
    exs = [{"k": "ok"}, {"k": "ok"}, {"k": bad}]
    with pytest.raises(tg.PartitionError, match=rf"example 2: group key .* of type {what} is not allowed"):
        tg.partition(exs, "k", tmp_path / "o", num_workers=1, progress=False)


def test_key_function_error_and_mixed_key_types(tmp_path):
    with pytest.raises(tg.PartitionError, match=r"example 3: key function raised ZeroDivisionError"):
        tg.partition([{"x": i} for i in range(5)], lambda e: str(1 / (e["x"] - 3)), tmp_path / "o", progress=False)
    with pytest.raises(tg.PartitionError, match=r"example 2: group key 7 is int but example 0 gave a str key"):
        tg.partition([{"k": "a"}, {"k": "b"}, {"k": 7}], "k", tmp_path / "o", progress=False)


@pytest.mark.parametrize("value, field", [
    ({"when": __import__("datetime").datetime(2020, 1, 1)}, "'when'"),
    ({"meta": {"inner": [1, {2, 3}]}}, r"'meta\.inner\[1\]'"),
    ({"meta": {"blob": b"x"}}, r"'meta\.blob'"),
    ({"arr": np.array([{"a": 1}], dtype=object)}, "'arr'"),
])
def test_unserializable_value_names_field(tmp_path, value, field):
    exs = [{"g": "a", "v": 1}, {"g": "b", **value}]
    with pytest.raises(tg.PartitionError, match=rf"example 1 \(group 'b'\): field {field}"):
        tg.partition(exs, "g", tmp_path / "o", progress=False)


def test_existing_dataset_needs_overwrite_and_survives_bad_input(tmp_path):
    out = tmp_path / "o"
    first = tg.partition([{"g": "a", "v": 1}], "g", out, progress=False)["snapshot"]
    with pytest.raises(FileExistsError, match="already holds a complete torch_grouper dataset; pass overwrite=True"):
        tg.partition([{"g": "b"}], "g", out, progress=False)
    # bad input with overwrite=True fails before anything is touched
    with pytest.raises(tg.PartitionError):
        tg.partition([{"g": "b"}, {"h": 1}], "g", out, overwrite=True, progress=False)
    assert [s["snapshot"] for s in tg.list_snapshots(out)] == [first]
    assert os.listdir(out / "snapshots") == [first]
    assert [g.id for g in tg.GroupedDataset(out)] == ["a"]
    second = tg.partition([{"g": "b"}, {"g": "c"}], "g", out, overwrite=True, progress=False)["snapshot"]
    assert sorted(g.id for g in tg.GroupedDataset(out)) == ["b", "c"]
    assert sorted(os.listdir(out)) == ["_leases", "_log", "manifest.json", "snapshots"]
    assert sorted(os.listdir(out / "snapshots")) == sorted([first, second])  # the previous one is kept
    assert os.listdir(out / "_leases") == []
    folder = tg.GroupedDataset(out).root
    m = tg.GroupedDataset(out).manifest
    assert sorted(os.listdir(folder)) == sorted(["index.parquet", "manifest.json"] + [s["path"] for s in m["shards"]])
    assert tg.vacuum(out, keep=1) == [first]
    assert os.listdir(out / "snapshots") == [second]


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not empty and holds no torch_grouper dataset \(found \['notes.txt'\]\)"):
        tg.partition([{"g": "a"}], "g", tmp_path / "o", progress=False)


def test_not_a_dataset_and_incomplete_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tg.GroupedDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is not a torch_grouper dataset \(no manifest.json\)"):
        tg.GroupedDataset(tmp_path / "empty")
    tg.partition([{"g": "a"}], "g", tmp_path / "half", progress=False)
    shutil.rmtree(tmp_path / "half" / "_log")  # as if killed before the commit point
    os.remove(tmp_path / "half" / "manifest.json")
    with pytest.raises(ValueError, match="holds an incomplete torch_grouper dataset"):
        tg.GroupedDataset(tmp_path / "half")
    with pytest.raises(ValueError, match="incomplete"):
        tg.load_index(tmp_path / "half")
    # rerunning the partition completes it (leftovers are ours, no overwrite needed)
    tg.partition([{"g": "a"}], "g", tmp_path / "half", progress=False)
    assert len(tg.GroupedDataset(tmp_path / "half")) == 1


def test_bad_sources(tmp_path):
    with pytest.raises(tg.SourceError, match="does not exist"):
        tg.partition(tmp_path / "missing.jsonl", "g", tmp_path / "o", progress=False)
    with pytest.raises(tg.SourceError, match="no file matches"):
        tg.partition(str(tmp_path / "*.parquet"), "g", tmp_path / "o", progress=False)
    (tmp_path / "bad.jsonl").write_text('{"g": 1}\n{"g": 2\n')
    with pytest.raises(tg.SourceError, match=r"bad\.jsonl: line at byte 9: invalid JSON"):
        tg.partition(tmp_path / "bad.jsonl", "g", tmp_path / "o", progress=False)
    (tmp_path / "arr.jsonl").write_text('[1, 2]\n')
    with pytest.raises(tg.SourceError, match="must be an object, not list"):
        tg.partition(tmp_path / "arr.jsonl", "g", tmp_path / "o", progress=False)
    with pytest.raises(tg.SourceError, match="cannot partition an object of type int"):
        tg.partition(5, "g", tmp_path / "o", progress=False)
    with pytest.raises(tg.PartitionError, match=r"example 1 \(group 'x'\): an example must be a dict, not str"):
        tg.partition([{"g": "a"}, "oops"], lambda e: "x", tmp_path / "o", progress=False)
    with pytest.raises(TypeError, match="key must be a column name or a callable"):
        tg.partition([], 3, tmp_path / "o", progress=False)


def test_random_access_unknown_group(tmp_path):
    tg.partition([{"g": "a"}], "g", tmp_path / "o", progress=False)
    with pytest.raises(KeyError, match="no group 'zz'"):
        tg.GroupedDataset(tmp_path / "o")["zz"]
