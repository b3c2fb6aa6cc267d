"""torch_grouper: group-structured datasets for PyTorch.

Partition any dataset into per-group WebDataset tar shards on any fsspec
filesystem, and stream the groups back as PyTorch IterableDatasets.
"""
from ._version import __version__

from .codec import EncodeError
from .engines import LocalEngine
from .engines.steps import PartitionError
from .pipeline import partition, partition_together, partition_vertical
from .retry import RetryError
from .snapshots import ConcurrentCommitError, SnapshotNotFoundError, list_snapshots, vacuum
from . import partitioners
from .partitioners import ColumnKey, UrlDomainKey
from .sources import SourceError
from .tario import GroupMismatchError, TarFormatError
from .verify import verify

# The read side (PyTorch datasets) is imported on first use, so that the write
# path (partition, and its worker processes on a cluster) does not pay for
# importing torch.
_READ_SIDE = {name: "dataset" for name in ("Cohorts", "Group", "GroupedDataset", "ReadOptions", "load_index",
                                            "shard_urls")}
_READ_SIDE["GroupLoader"] = "loader"
_READ_SIDE["transforms"] = None  # a module of the read side


def __getattr__(name):
    if name not in _READ_SIDE:
        raise AttributeError(f"module 'torch_grouper' has no attribute {name!r}")
    import importlib

    module = _READ_SIDE[name]
    value = (importlib.import_module(f".{name}", __name__) if module is None
             else getattr(importlib.import_module(f".{module}", __name__), name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_READ_SIDE))


def to_ray_dataset(path, **kwargs):
    """A ``ray.data.Dataset`` with one row per group (see
    :func:`torch_grouper.ray_data.to_ray_dataset`); Ray is imported on call."""
    from .ray_data import to_ray_dataset as _to_ray_dataset

    return _to_ray_dataset(path, **kwargs)


__all__ = [
    "__version__",
    "Cohorts",
    "ColumnKey",
    "ConcurrentCommitError",
    "EncodeError",
    "Group",
    "GroupLoader",
    "GroupMismatchError",
    "GroupedDataset",
    "LocalEngine",
    "PartitionError",
    "ReadOptions",
    "RetryError",
    "SnapshotNotFoundError",
    "SourceError",
    "TarFormatError",
    "UrlDomainKey",
    "list_snapshots",
    "load_index",
    "partition",
    "partition_together",
    "partition_vertical",
    "partitioners",
    "shard_urls",
    "to_ray_dataset",
    "transforms",
    "vacuum",
    "verify",
]
