"""torch_grouper: group-structured datasets for PyTorch.

Partition any dataset into per-group WebDataset tar shards on any fsspec
filesystem, and stream the groups back as PyTorch IterableDatasets.
"""
from ._version import __version__

from .codec import EncodeError
from .dataset import Cohorts, Group, GroupedDataset, ReadOptions, load_index, shard_urls
from .engines import LocalEngine
from .loader import GroupLoader
from .engines.steps import PartitionError
from .pipeline import partition, partition_together, partition_vertical
from .retry import RetryError
from .snapshots import ConcurrentCommitError, SnapshotNotFoundError, list_snapshots, vacuum
from . import partitioners, transforms
from .partitioners import ColumnKey, UrlDomainKey
from .sources import SourceError
from .tario import GroupMismatchError, TarFormatError
from .verify import verify


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
