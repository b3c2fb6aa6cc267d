"""Vector and array fields declared by the features come back as numpy arrays
and collate into one [batch, ...] tensor per field."""
import json

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import torch_grouper as tg
from torch_grouper.features import array_fields


def _rows(n=96):
    rng = np.random.default_rng(0)
    return [{"g": f"u{i % 3}", "v": rng.random(8).astype(np.float32).tolist(), "m": [[i, i + 1], [i + 2, i + 3]],
             "ids": [i, i, i], "label": i % 2, "text": f"t{i}"} for i in range(n)]


FEATURES = datasets.Features({
    "g": datasets.Value("string"), "v": datasets.Sequence(datasets.Value("float32"), length=8),
    "m": datasets.Array2D((2, 2), "int64"), "ids": datasets.Sequence(datasets.Value("int64")),
    "label": datasets.ClassLabel(names=["a", "b"]), "text": datasets.Value("string")})


def test_array_fields_from_features():
    assert array_fields(FEATURES.to_dict()) == {"v": "float32", "m": "int64", "ids": "int64"}
    assert array_fields(None) == {}
    nested = datasets.Features({"x": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                                "s": datasets.Sequence(datasets.Value("string"))})
    assert array_fields(nested.to_dict()) == {"x": "float64"}


@pytest.mark.parametrize("source", ["hf", "jsonl"])
def test_vectors_come_back_as_arrays_and_stack_in_batches(tmp_path, source):
    rows = _rows()
    if source == "hf":
        src = datasets.Dataset.from_list(rows, features=FEATURES)
        tg.partition(src, "g", tmp_path / "o", progress=False)
    else:  # a JSON Lines source declares its features at partition time
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tg.partition(path, "g", tmp_path / "o", progress=False, features=FEATURES)
    ds = tg.GroupedDataset(tmp_path / "o")
    g = ds["u1"]
    ex = next(iter(g))
    assert isinstance(ex["v"], np.ndarray) and ex["v"].dtype == np.float32 and ex["v"].shape == (8,)
    assert ex["m"].shape == (2, 2) and ex["m"].dtype == np.int64
    assert [list(e["v"]) for e in g] == [r["v"] for r in rows if r["g"] == "u1"]
    assert isinstance(ex["text"], str) and type(ex["label"]) is int
    pipe = tg.transforms.client_pipeline(seed=None, batch_size=16, to_torch=True)
    batches = next(iter(DataLoader(ds.map_groups(pipe), batch_size=None, num_workers=2)))
    b = batches[0]
    assert isinstance(b["v"], torch.Tensor) and b["v"].shape == (16, 8) and b["v"].dtype == torch.float32
    assert b["m"].shape == (16, 2, 2) and b["label"].shape == (16,)
    # the stored bytes are the same with or without the declaration; arrays=False gives lists
    plain = tg.GroupedDataset(tmp_path / "o", arrays=False)
    assert type(next(iter(plain["u1"]))["v"]) is list


def test_ragged_values_stay_lists(tmp_path):
    rows = [{"g": "a", "x": [1.0, 2.0]}, {"g": "a", "x": [[1.0], [2.0, 3.0]]}]
    feats = datasets.Features({"g": datasets.Value("string"),
                               "x": datasets.Sequence(datasets.Value("float64"))})
    tg.partition(rows, "g", tmp_path / "o", progress=False, features=feats)
    got = [e["x"] for e in tg.GroupedDataset(tmp_path / "o")["a"]]
    assert isinstance(got[0], np.ndarray) and got[1] == [[1.0], [2.0, 3.0]]
