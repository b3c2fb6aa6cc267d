"""Helpers shared by the tests (import as ``from helpers import ...``)."""
import hashlib
import math
import os
import random
from collections import defaultdict

import numpy as np

import torch_grouper as tg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ray workers import this checkout's torch_grouper (and the test modules, for their key functions)
RAY_RUNTIME_ENV = {"env_vars": {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
                                "RAY_USAGE_STATS_ENABLED": "0"}}


def dataset_dir(path) -> str:
    """The local folder holding the current snapshot's manifest, index and shards."""
    return tg.GroupedDataset(path).root


def digest(path) -> dict:
    """sha256 of every file of the current snapshot of a local dataset, by name."""
    folder = dataset_dir(path)
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder))}


GROUPS = ["alpha", "b/c", "..", "d.e.f", "ünïcödé", "x" * 300, "Case", "case", "", "../etc/passwd", "sp ace"]


def same(a, b) -> bool:
    """Exact equality that also treats nan == nan and compares numpy arrays by dtype/shape/value."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def mixed_examples(n=400, seed=0):
    """Examples of every supported value type, over awkward group ids."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({
            "gid": rng.choice(GROUPS),
            "i": i,
            "big": 2**62 + i,
            "f": rng.random(),
            "special": [float("nan"), float("inf"), -float("inf"), -0.0][i % 4],
            "flag": i % 3 == 0,
            "none": None,
            "lst": [1, "x", None, [2.5, True]],
            "nested": {"k": {"j": [i, {"deep": "é"}]}, "empty": {}},
            "raw": bytes([i % 256]) * (i % 5),
            "arr": np.arange(i % 4 * 2, dtype=[np.float32, np.int64, np.uint8][i % 3]).reshape(-1, 2),
            "text": "hello wörld  \n" * (i % 3) + "\ud800" * (i == 7),
        })
    return out


def groupby(examples, key):
    g = defaultdict(list)
    for ex in examples:
        g[key(ex)].append(ex)
    return g
