"""Helpers shared by the tests (import as ``from helpers import ...``)."""
import hashlib
import os

import torch_grouper as tg


def dataset_dir(path) -> str:
    """The local folder holding the current snapshot's manifest, index and shards."""
    return tg.GroupedDataset(path).root


def digest(path) -> dict:
    """sha256 of every file of the current snapshot of a local dataset, by name."""
    folder = dataset_dir(path)
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder))}
