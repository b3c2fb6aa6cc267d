"""torch_grouper: group-structured datasets for PyTorch.

Partition any dataset into per-group WebDataset tar shards on any fsspec
filesystem, and stream the groups back as PyTorch IterableDatasets.
"""
__version__ = "0.1.0"

from .codec import EncodeError
from .dataset import Cohorts, Group, GroupedDataset, load_index
from .engines.local import PartitionError
from .pipeline import partition, partition_vertical
from . import partitioners, transforms
from .partitioners import ColumnKey, UrlDomainKey
from .sources import SourceError
from .tario import GroupMismatchError, TarFormatError
from .verify import verify

__all__ = [
    "Cohorts",
    "ColumnKey",
    "EncodeError",
    "Group",
    "GroupMismatchError",
    "GroupedDataset",
    "PartitionError",
    "SourceError",
    "TarFormatError",
    "UrlDomainKey",
    "load_index",
    "partition",
    "partition_vertical",
    "partitioners",
    "transforms",
    "verify",
]
