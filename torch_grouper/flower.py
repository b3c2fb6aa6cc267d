"""Flower adapter (``pip install torch-grouper[flower]``).

- :class:`GroupedPartitioner`: a flwr-datasets ``Partitioner`` over a grouped
  dataset: one partition per group, ``load_partition(i)`` a ``datasets.Dataset``
  of that group's examples, read by one ranged read (local disk, S3, any fsspec
  URL).  flwr-datasets' ``compute_counts`` and ``plot_label_distributions`` work
  on it unchanged.
- :class:`GroupFedAvg`: Flower's message-based ``FedAvg`` for cross-device
  training over many more groups than SuperNodes: each round's groups are drawn
  by ``GroupedDataset.cohort_ids`` (no data read on the server) and every message
  carries its own group id.
- :func:`load_client_data`: in a ``ClientApp``, the group named by the message.

Partition ids are the groups' rows in the dataset's index (dataset order, as
``tg.load_index(path)`` and ``GroupedDataset.group_ids()`` list them): stable
for a given dataset, ``group_id(pid)`` / ``partition_id(gid)`` convert.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from logging import INFO
from time import sleep

import numpy as np

from .dataset import Group, GroupedDataset

try:
    import datasets
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.common import log
    from flwr.serverapp.strategy import FedAvg
    from flwr_datasets.partitioner import Partitioner
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"torch_grouper.flower needs Flower and flwr-datasets: pip install 'torch-grouper[flower]' ({e})"
    ) from e

__all__ = ["GROUP_ID_KEY", "DATASET_KEY", "GroupedPartitioner", "DatasetView", "GroupFedAvg",
           "load_client_data", "to_hf_dataset"]

GROUP_ID_KEY = "group-id"  # config key of the group a message is about
DATASET_KEY = "dataset"  # config key of the dataset URL (sent by GroupFedAvg unless send_dataset=False)
DEFAULT_MAX_ROWS = 1_000_000


def _open(path_or_dataset, storage_options) -> GroupedDataset:
    if isinstance(path_or_dataset, GroupedDataset):
        if path_or_dataset._transforms:
            raise ValueError(f"{path_or_dataset.url}: this GroupedDataset has map_groups transforms; pass the "
                             f"plain dataset (or its path): partitions are the groups' examples as stored")
        return path_or_dataset
    return GroupedDataset(path_or_dataset, storage_options=storage_options)


def to_hf_dataset(examples: list, features=None, *, where: str = "") -> "datasets.Dataset":
    """A ``datasets.Dataset`` of ``examples`` (features from the manifest when
    given, else inferred by ``datasets``)."""
    try:
        if not examples:
            return datasets.Dataset.from_dict({k: [] for k in features} if features else {}, features=features)
        return datasets.Dataset.from_list(examples, features=features)
    except Exception as e:
        raise ValueError(f"{where}: the examples do not form a datasets.Dataset: {e}") from e


class GroupedPartitioner(Partitioner):
    """A flwr-datasets ``Partitioner`` whose partitions are the groups of a
    torch_grouper dataset.

    ``num_partitions`` is the number of groups; partition ``i`` is the group at
    row ``i`` of the index (dataset order), so ids are stable integers for a
    given dataset; ``group_id(i)`` and ``partition_id(gid)`` convert.
    ``load_partition(i)`` reads that group (one ranged read) and returns a
    ``datasets.Dataset`` of its examples in stored order, with the manifest's
    features when the source had them (otherwise ``datasets`` infers them, group
    by group).

    ``partitioner.dataset`` is a :class:`DatasetView` of the whole dataset: what
    flwr-datasets' ``compute_counts`` and ``plot_label_distributions`` read
    (``column_names``, ``features``, ``unique(column)``) comes from the manifest
    or one streaming pass, without building the whole dataset in memory; any
    other ``datasets.Dataset`` use materializes it, refused above ``max_rows``
    examples.  The partitioner takes no dataset of its own: assigning
    ``partitioner.dataset`` (as ``FederatedDataset`` would) raises.

    Args:
        path_or_dataset: dataset path or fsspec URL, or a ``GroupedDataset``.
        storage_options: fsspec options (credentials, endpoint) for a path.
        max_rows: largest number of examples ``partitioner.dataset`` may
            materialize as one ``datasets.Dataset``.
    """

    def __init__(self, path_or_dataset, *, storage_options: dict | None = None, max_rows: int = DEFAULT_MAX_ROWS):
        super().__init__()
        self.grouped = _open(path_or_dataset, storage_options)
        self.max_rows = int(max_rows)
        self._ids: list | None = None
        self._features = self.grouped.features
        self._view = DatasetView(self)

    # ------------------------------------------------------------- Partitioner
    @property
    def dataset(self) -> "DatasetView":
        return self._view

    @dataset.setter
    def dataset(self, value) -> None:
        raise TypeError(f"GroupedPartitioner reads its partitions from {self.grouped.url}; it takes no dataset "
                        f"(use it directly, not through FederatedDataset)")

    def is_dataset_assigned(self) -> bool:
        return True

    @property
    def num_partitions(self) -> int:
        return len(self.grouped)

    def load_partition(self, partition_id: int) -> "datasets.Dataset":
        """The examples of the group at index row ``partition_id``, as a ``datasets.Dataset``."""
        gid = self.group_id(partition_id)
        return to_hf_dataset(self.grouped[gid].examples(), self._features,
                             where=f"{self.grouped.url}: group {gid!r} (partition {partition_id})")

    # ------------------------------------------------------------- ids
    def group_ids(self) -> list:
        if self._ids is None:
            self._ids = self.grouped.group_ids()
        return self._ids

    def group_id(self, partition_id: int):
        """The group id of partition ``partition_id`` (its row in the index)."""
        n = self.num_partitions
        if isinstance(partition_id, (bool, np.bool_)) or not isinstance(partition_id, (int, np.integer)):
            raise TypeError(f"partition_id must be an int, got {type(partition_id).__name__} {partition_id!r}")
        if not 0 <= partition_id < n:
            raise ValueError(f"partition_id {partition_id} is out of range: {self.grouped.url} has {n} "
                             f"partitions (0..{n - 1})")
        return self.group_ids()[int(partition_id)]

    def partition_id(self, group_id) -> int:
        """The partition id (index row) of group ``group_id``."""
        return self.grouped.position_of(group_id)

    def __repr__(self) -> str:
        return f"GroupedPartitioner({self.grouped.url!r}, num_partitions={self.num_partitions})"


class DatasetView:
    """The whole grouped dataset as ``GroupedPartitioner.dataset``.

    Answers ``column_names``, ``features``, ``num_rows`` / ``len`` from the
    manifest (or from the first group when the manifest has no features) and
    ``unique(column)`` with one streaming pass over the groups, in first-seen
    order.  Anything else a ``datasets.Dataset`` has (``view["label"]``,
    ``view.filter(...)``, ...) materializes the dataset once, in dataset order
    (groups by index row, examples in stored order), and is refused with a
    ``ValueError`` naming the size when it has more than ``max_rows`` examples.
    """

    def __init__(self, partitioner: GroupedPartitioner):
        self._p = partitioner
        self._features = None
        self._full = None
        self._lock = threading.Lock()

    @property
    def num_rows(self) -> int:
        return self._p.grouped.num_examples

    def __len__(self) -> int:
        return self.num_rows

    @property
    def features(self) -> "datasets.Features":
        if self._features is None:
            f = self._p._features
            if f is None:
                f = self._p.load_partition(0).features if self._p.num_partitions else datasets.Features()
            self._features = f
        return self._features

    @property
    def column_names(self) -> list:
        return list(self.features)

    def unique(self, column: str) -> list:
        """Distinct values of ``column`` over all examples, in first-seen order
        (one streaming pass; memory holds only the distinct values)."""
        if column not in self.column_names:
            raise ValueError(f"column {column!r} is not in {self._p.grouped.url} (columns: {self.column_names})")
        seen: dict = {}
        ds = self._p.grouped
        for row in range(len(ds)):
            g = ds[self._p.group_ids()[row]]
            for ex in g:
                v = ex.get(column)
                try:
                    seen.setdefault(v, None)
                except TypeError:
                    raise TypeError(f"column {column!r} of group {g.id!r} holds an unhashable "
                                    f"{type(v).__name__}: unique() needs scalar values") from None
        return list(seen)

    def to_dataset(self) -> "datasets.Dataset":
        """The whole dataset as one in-memory ``datasets.Dataset`` (refused above ``max_rows`` examples)."""
        with self._lock:
            if self._full is None:
                n, limit = self.num_rows, self._p.max_rows
                if n > limit:
                    raise ValueError(
                        f"{self._p.grouped.url} has {n:,} examples, more than max_rows={limit:,}: it is not "
                        f"materialized as one datasets.Dataset (pass GroupedPartitioner(..., max_rows=...) to allow "
                        f"it, or read partitions with load_partition)")
                ds = self._p.grouped
                examples = [ex for gid in self._p.group_ids() for ex in ds[gid]]
                self._full = to_hf_dataset(examples, self._p._features, where=ds.url)
            return self._full

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.to_dataset(), name)

    def __getitem__(self, key):
        return self.to_dataset()[key]

    def __iter__(self):
        return iter(self.to_dataset())

    def __repr__(self) -> str:
        return f"DatasetView({self._p.grouped.url!r}, num_rows={self.num_rows}, partitions={self._p.num_partitions})"


# ---------------------------------------------------------------------- Flower strategy
class GroupFedAvg(FedAvg):
    """Flower's ``FedAvg`` (Message API) with one group per message.

    Each training round draws ``cohort_size`` group ids with
    ``GroupedDataset.cohort_ids`` (same arguments and draws as
    ``ds.cohorts(cohort_size, seed=seed, replacement=..., weighted=...)``;
    Flower round ``r`` is cohort round ``r - 1``); only the index is read on the
    server.  Message ``k`` of the round carries the ``k``-th group id in its
    config under ``"group-id"`` (and the dataset URL under ``"dataset"``), next
    to ``"server-round"``; clients read it with :func:`load_client_data`.

    SuperNodes: with a cohort no larger than the connected SuperNodes, each
    group goes to a different SuperNode (a seeded choice per round).  With a
    larger cohort, the messages are dealt to all SuperNodes in turn (message
    ``k`` to SuperNode ``k mod n`` of a seeded order), so a SuperNode gets
    ``ceil(cohort / n)`` or ``floor(cohort / n)`` messages in the round (a
    SuperNode handles its messages in turn; Flower's simulation engine may
    spread them over its workers); each reply is one group's update and FedAvg
    weighs it by its ``num-examples``.  ``max_messages_per_node=1`` makes a larger cohort an
    error instead (``ValueError`` naming both numbers).

    Evaluation (``configure_evaluate``) sends ``evaluate_cohort_size`` groups
    (default: ``cohort_size``; 0: no federated evaluation) drawn the same way
    with ``evaluate_seed`` (default ``seed + 1``).  ``self.assignments[(phase,
    round)]`` records the ``(node_id, group_id)`` pairs sent.

    Other keyword arguments go to ``FedAvg`` (``weighted_by_key``,
    ``arrayrecord_key``, ``configrecord_key``, metric aggregation functions).
    """

    def __init__(self, dataset, cohort_size: int, *, seed: int = 0, replacement: str = "epoch",
                 weighted: bool = False, evaluate_cohort_size: int | None = None, evaluate_seed: int | None = None,
                 max_messages_per_node: int | None = None, min_available_nodes: int = 1,
                 storage_options: dict | None = None, send_dataset: bool = True, **fedavg_kwargs):
        evaluate_cohort_size = cohort_size if evaluate_cohort_size is None else evaluate_cohort_size
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0 if evaluate_cohort_size else 0.0,
                         min_train_nodes=1, min_evaluate_nodes=1 if evaluate_cohort_size else 0,
                         min_available_nodes=min_available_nodes, **fedavg_kwargs)
        self.grouped = _open(dataset, storage_options)
        if max_messages_per_node is not None and max_messages_per_node < 1:
            raise ValueError(f"max_messages_per_node must be >= 1 or None, got {max_messages_per_node}")
        self.cohort_size, self.seed = int(cohort_size), int(seed)
        self.evaluate_cohort_size = int(evaluate_cohort_size)
        self.evaluate_seed = self.seed + 1 if evaluate_seed is None else int(evaluate_seed)
        self.max_messages_per_node = max_messages_per_node
        self.send_dataset = send_dataset
        # validates sizes and options now (before any round), reads no group
        self._train = self.grouped.cohorts(self.cohort_size, seed=self.seed, replacement=replacement,
                                           weighted=weighted)
        self._eval = (self.grouped.cohorts(self.evaluate_cohort_size, seed=self.evaluate_seed,
                                           replacement=replacement, weighted=weighted)
                      if self.evaluate_cohort_size else None)
        self.assignments: dict = {}

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> Groups: %s of %d per round from %s (seed %d)", self.cohort_size, len(self.grouped),
            self.grouped.url, self.seed)

    def group_ids(self, server_round: int, phase: str = "train") -> list:
        """The group ids of Flower round ``server_round`` (1-based) for ``phase`` "train" or "evaluate"."""
        cohorts = self._train if phase == "train" else self._eval
        if cohorts is None:
            return []
        return cohorts.ids(server_round - 1)

    def _deal(self, server_round: int, gids: list, grid, phase: str) -> list:
        """(node_id, group_id) for each group of the round (see the class doc)."""
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).", len(nodes),
                self.min_available_nodes)
            sleep(1)
        n, c = len(nodes), len(gids)
        if self.max_messages_per_node is not None and c > n * self.max_messages_per_node:
            raise ValueError(
                f"round {server_round}: a {phase} cohort of {c} groups needs more than max_messages_per_node="
                f"{self.max_messages_per_node} message(s) per SuperNode with {n} SuperNode(s) connected")
        rng = np.random.default_rng([self.seed, server_round, 0 if phase == "train" else 1])
        order = [nodes[i] for i in rng.permutation(n)]
        pairs = [(order[k % n], gid) for k, gid in enumerate(gids)]
        self.assignments[(phase, server_round)] = pairs
        log(INFO, "configure_%s: %d groups on %d of %d SuperNodes", phase, c, min(c, n), n)
        return pairs

    def _messages(self, server_round, arrays, config, grid, phase, message_type) -> list:
        gids = self.group_ids(server_round, phase)
        if not gids:
            return []
        out = []
        for node_id, gid in self._deal(server_round, gids, grid, phase):
            cfg = ConfigRecord(dict(config))
            cfg["server-round"] = server_round
            cfg[GROUP_ID_KEY] = gid
            if self.send_dataset:
                cfg[DATASET_KEY] = self.grouped.url
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            out.append(Message(content=record, message_type=message_type, dst_node_id=node_id))
        return out

    def configure_train(self, server_round, arrays, config, grid):
        """One message per group of the round's cohort, each with its own ``group-id``."""
        return self._messages(server_round, arrays, config, grid, "train", MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        """One message per group of the round's evaluation cohort (none when ``evaluate_cohort_size=0``)."""
        return self._messages(server_round, arrays, config, grid, "evaluate", MessageType.EVALUATE)


# ---------------------------------------------------------------------- client side
_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


def _config_of(msg_or_config) -> Mapping:
    x = msg_or_config.content if isinstance(msg_or_config, Message) else msg_or_config
    if isinstance(x, RecordDict):
        records = x.config_records
        if "config" in records:
            return records["config"]
        for rec in records.values():
            if GROUP_ID_KEY in rec:
                return rec
        raise KeyError(f"the message has no config record with {GROUP_ID_KEY!r} (records: {list(records)})")
    if isinstance(x, Mapping):
        return x
    raise TypeError(f"expected a Flower Message, RecordDict, ConfigRecord or mapping, got "
                    f"{type(msg_or_config).__name__}")


def load_client_data(msg_or_config, path=None, *, storage_options: dict | None = None, as_dataset: bool = False):
    """The data of the group a message is about, in a ``ClientApp``.

    ``msg_or_config``: the Flower ``Message`` (its ``"config"`` record), or a
    ``ConfigRecord`` / dict, holding ``"group-id"`` as :class:`GroupFedAvg`
    sends it.  ``path``: the dataset (default: the ``"dataset"`` URL in the
    config); ``storage_options`` are the client's own fsspec options.  Returns
    the :class:`Group` (``g.id``, ``len(g)``, ``for ex in g``), or with
    ``as_dataset`` a ``datasets.Dataset`` of its examples.  The dataset is
    opened once per process and path.
    """
    cfg = _config_of(msg_or_config)
    if GROUP_ID_KEY not in cfg:
        raise KeyError(f"no {GROUP_ID_KEY!r} in the message config (keys: {sorted(cfg)}); the server strategy "
                       f"must send one group per message (GroupFedAvg does)")
    gid = cfg[GROUP_ID_KEY]
    if path is None:
        if DATASET_KEY not in cfg:
            raise KeyError(f"no dataset path given and no {DATASET_KEY!r} in the message config")
        path = cfg[DATASET_KEY]
    key = (str(path), repr(sorted((storage_options or {}).items())))
    with _OPEN_LOCK:
        ds = _OPEN.get(key)
        if ds is None:
            ds = _OPEN[key] = GroupedDataset(path, storage_options=storage_options)
    g: Group = ds[gid]
    if as_dataset:
        return to_hf_dataset(g.examples(), ds.features, where=f"{ds.url}: group {gid!r}")
    return g
