"""Key functions: what decides an example's group.

``partition(source, key=...)`` accepts a column name, any callable
``example -> str | int | bytes`` (lambdas work: the engine pickles with dill),
or one of the key objects below.  Key objects are plain picklable callables
with a ``describe()`` used in the dataset manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple
from urllib.parse import urlsplit

import numpy as np


class ColumnKey:
    """Group by the value of one column (flwr-datasets' NaturalIdPartitioner)."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, ex: dict) -> Any:
        return ex[self.column]

    def describe(self) -> dict:
        return {"type": "column", "column": self.column}


class UrlDomainKey:
    """Group web documents by the host of a URL column (Dataset Grouper's FedC4)."""

    def __init__(self, column: str = "url"):
        self.column = column

    def __call__(self, ex: dict) -> str:
        return url_domain(ex[self.column])

    def describe(self) -> dict:
        return {"type": "url_domain", "column": self.column}


_NETLOC_END = ("/", "?", "#")


def url_domain(url: str) -> str:
    """``urllib.parse.urlsplit(url).netloc``, with a fast path for plain URLs."""
    i = url.find("://")
    if i > 0 and url.isascii() and url.isprintable() and " " not in url and url[:i].isalpha():
        j = len(url)
        for c in _NETLOC_END:
            k = url.find(c, i + 3, j)
            if k >= 0:
                j = k
        return url[i + 3 : j]
    return urlsplit(url).netloc


def key_function(key) -> Callable[[dict], Any]:
    """Turn what the user passed as ``key`` into a callable."""
    if isinstance(key, str):
        if not key:
            raise ValueError("key column name is empty")
        return ColumnKey(key)
    if callable(key):
        return key
    raise TypeError(
        f"key must be a column name or a callable example -> str | int | bytes, "
        f"not {type(key).__name__}"
    )


def describe_key(fn) -> dict:
    if hasattr(fn, "describe"):
        return fn.describe()
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return {"type": "callable", "name": f"{getattr(fn, '__module__', '?')}.{name}"}


# ----------------------------------------------------------------------------
# Partitioners fitted on the whole source (flwr-datasets' partitioners)
# ----------------------------------------------------------------------------
class Partitioner:
    """A key fitted on the whole source before any example is assigned.

    ``partition()`` first makes one cheap pass that counts the examples and,
    when ``label_column`` is set, the examples of each label (reading only that
    column from Parquet files and datasets).  ``fit`` turns those counts into a
    plan; then every worker assigns each example from its global index and its
    rank among the examples of its label, in input order.  So the assignment
    is the same for any number of workers and for map-style or streaming
    sources, and examples are never collected in one place.

    ``assign`` returns a partition id (an int, the group id), or None for an
    example the configuration leaves out (flwr-datasets leaves the same ones
    out; the manifest counts them as ``num_dropped``).
    """

    label_column: str | None = None
    #: record label skew statistics for ``label_column`` (labels, not ids)
    label_stats = False
    #: the first pass collects ``label_column``'s values in input order
    #: (``fit`` gets that list instead of label counts)
    collect_values = False

    def fit(self, num_examples: int, label_counts: dict) -> None:
        raise NotImplementedError

    def assign(self, ex: dict, index: int, rank: int):
        raise NotImplementedError

    @property
    def num_partitions(self) -> int:
        """Number of partitions (known after ``fit`` for GroupedNaturalIdPartitioner)."""
        return self._num_partitions

    def __call__(self, ex):
        raise TypeError(f"{type(self).__name__} is applied by torch_grouper.partition(source, key=partitioner)")

    def params(self) -> dict:
        """The parameters the manifest records (``describe``).  Built-in
        partitioners list theirs; this default takes each constructor
        parameter the instance holds under its own name, and ``label_column``."""
        return _init_params(self, extra=("label_column",))

    def describe(self) -> dict:
        return {"type": type(self).__name__, **{k: _plain(v) for k, v in self.params().items()}}


class SliceStart(NamedTuple):
    """Where one slice starts in a fitted partitioner's numbering: the global
    index of its first example and, per label, the rank of its first example
    among that label's examples.  With it, any worker assigns the slice's
    examples alone."""

    index: int
    ranks: dict


@dataclass
class FitResult:
    starts: list  # one SliceStart per slice, in slice order
    num_examples: int
    num_labels: int  # distinct labels counted (0 without a label column or when values are collected)


def fit_partitioner(partitioner: "Partitioner", per_slice: list) -> FitResult:
    """Fit ``partitioner`` on a first pass over the source: ``per_slice`` holds
    one ``(examples, counts)`` per slice, in slice order, where ``counts`` is
    ``{label: count}`` in first-seen order (or, for a partitioner that
    ``collect_values``, the list of the label column's values)."""
    starts = []
    total = 0
    if partitioner.collect_values:
        values: list = []
        for n, vals in per_slice:
            starts.append(SliceStart(total, {}))
            total += n
            values.extend(vals)
        partitioner.fit(total, values)
        return FitResult(starts, total, 0)
    totals: dict = {}
    for n, counts in per_slice:
        starts.append(SliceStart(total, dict(totals)))
        total += n
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    partitioner.fit(total, totals)
    return FitResult(starts, total, len(totals))


def _init_params(obj, extra=()) -> dict:
    """Constructor parameters that ``obj`` holds as attributes of the same name."""
    import inspect

    held = vars(obj)
    names = [n for n, p in inspect.signature(type(obj).__init__).parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    out = {n: held[n] for n in names if n in held}
    for n in extra:
        if getattr(obj, n, None) is not None:
            out.setdefault(n, getattr(obj, n))
    return out


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if callable(v):
        return getattr(v, "__name__", repr(v))
    return v


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_sizes(partition_sizes) -> list:
    if isinstance(partition_sizes, (str, bytes)) or not hasattr(partition_sizes, "__len__") or not len(partition_sizes):
        raise ValueError("partition_sizes must be a non-empty sequence of positive integers")
    for s in partition_sizes:
        _check_positive("every partition size", s)
    return [int(s) for s in partition_sizes]


def _sorted_labels(label_counts: dict, column: str) -> list:
    try:
        return sorted(label_counts)
    except TypeError:
        types = sorted({type(k).__name__ for k in label_counts})
        raise ValueError(f"labels in column {column!r} cannot be sorted (types {types})") from None


class _Contiguous(Partitioner):
    """Partitions are consecutive runs of examples in input order."""

    def _sizes(self, n: int) -> list:
        raise NotImplementedError

    def fit(self, num_examples: int, label_counts: dict) -> None:
        sizes = [int(x) for x in self._sizes(num_examples)]
        self._plan_bounds = list(np.cumsum(sizes))

    def assign(self, ex, index, rank):
        i = bisect_right(self._plan_bounds, index)
        return i if i < len(self._plan_bounds) else None


class IidPartitioner(_Contiguous):
    """flwr-datasets ``IidPartitioner(num_partitions)``: partition i is the i-th
    contiguous shard, as ``datasets.Dataset.shard(num_partitions, i, contiguous=True)``.
    (Shuffle the source first for an IID split.)"""

    def __init__(self, num_partitions: int):
        _check_positive("num_partitions", num_partitions)
        self._num_partitions = num_partitions

    def params(self):
        return {"num_partitions": self._num_partitions}

    def _sizes(self, n):
        if self._num_partitions > n:
            raise ValueError(f"IidPartitioner: num_partitions={self._num_partitions} is more than the "
                             f"{n} examples of the source")
        div, mod = divmod(n, self._num_partitions)
        return [div + (i < mod) for i in range(self._num_partitions)]


class SizePartitioner(_Contiguous):
    """flwr-datasets ``SizePartitioner(partition_sizes)``: partition i holds the
    next ``partition_sizes[i]`` examples; examples past their sum are left out."""

    def __init__(self, partition_sizes):
        self._partition_sizes = _check_sizes(partition_sizes)
        self._num_partitions = len(self._partition_sizes)

    def params(self):
        return {"partition_sizes": self._partition_sizes, "num_partitions": self._num_partitions}

    def _sizes(self, n):
        total = sum(self._partition_sizes)
        if total > n:
            raise ValueError(f"SizePartitioner: the partition sizes add up to {total}, more than the "
                             f"{n} examples of the source")
        if total < n:
            warnings.warn(f"SizePartitioner: the partition sizes add up to {total}; the last "
                          f"{n - total} of {n} examples are left out", stacklevel=2)
        return self._partition_sizes


class IdToSizeFncPartitioner(_Contiguous):
    """flwr-datasets ``IdToSizeFncPartitioner(num_partitions, partition_id_to_size_fn)``:
    partition sizes proportional to ``fn(1..num_partitions)``, the rounding
    remainder going to the last partition."""

    def __init__(self, num_partitions: int, partition_id_to_size_fn):
        _check_positive("num_partitions", num_partitions)
        self._num_partitions = num_partitions
        self._partition_id_to_size_fn = partition_id_to_size_fn

    def params(self):
        return {"num_partitions": self._num_partitions, "partition_id_to_size_fn": self._partition_id_to_size_fn}

    def _sizes(self, n):
        units = np.asarray(self._partition_id_to_size_fn(
            np.linspace(start=1, stop=self._num_partitions, num=self._num_partitions)), dtype=np.float64)
        sizes = np.array(units / units.sum() * n, dtype=np.int64)
        sizes[-1] += n - sizes.sum()
        if (sizes < 1).any():
            raise ValueError(f"{type(self).__name__}: num_partitions={self._num_partitions} gives empty "
                             f"partitions for {n} examples (sizes {sizes.tolist()[:5]}...)")
        return sizes.tolist()


class LinearPartitioner(IdToSizeFncPartitioner):
    """Partition sizes proportional to 1, 2, ..., num_partitions."""

    def __init__(self, num_partitions: int):
        super().__init__(num_partitions, _linear)


class SquarePartitioner(IdToSizeFncPartitioner):
    """Partition sizes proportional to 1, 4, 9, ..."""

    def __init__(self, num_partitions: int):
        super().__init__(num_partitions, np.square)


class ExponentialPartitioner(IdToSizeFncPartitioner):
    """Partition sizes proportional to e^1, e^2, ..."""

    def __init__(self, num_partitions: int):
        super().__init__(num_partitions, np.exp)


def _linear(x):
    return x


class _ByLabel(Partitioner):
    """Each label's examples, in input order, are cut into consecutive pieces
    that go to partitions: ``_plan[label] = (cut points, partition of each piece)``."""

    label_stats = True

    def assign(self, ex, index, rank):
        cuts, owners = self._plan[ex[self.label_column]]
        return owners[bisect_right(cuts, rank)]


class DirichletPartitioner(_ByLabel):
    """flwr-datasets ``DirichletPartitioner``, same parameters and, for the same
    seed, the same partitions: for each label (in sorted order) proportions
    over partitions are drawn from Dir(alpha) and the label's examples are cut
    by them (with ``self_balancing``, partitions already above the average size
    take no more).  Resampled at most 10 times until every partition has
    ``min_partition_size`` examples, then a clear error; an impossible
    ``min_partition_size`` fails at once.  ``shuffle`` is accepted for
    compatibility: examples keep input order inside a group (shuffle when
    reading)."""

    def __init__(self, num_partitions: int, partition_by: str, alpha, min_partition_size: int = 10,
                 self_balancing: bool = False, shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        self._num_partitions = num_partitions
        self.label_column = partition_by
        a = np.asarray([alpha] * num_partitions if np.isscalar(alpha) else alpha, dtype=np.float64).ravel()
        if a.shape != (num_partitions,) or not (a > 0).all():
            raise ValueError(f"alpha must be a positive number or {num_partitions} positive numbers, got {alpha!r}")
        self._alpha = a
        self._min_partition_size = int(min_partition_size)
        self._self_balancing = self_balancing
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"num_partitions": self._num_partitions, "label_column": self.label_column, "alpha": self._alpha,
                "min_partition_size": self._min_partition_size, "self_balancing": self._self_balancing,
                "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, label_counts):
        n, parts = num_examples, self._num_partitions
        if parts * self._min_partition_size > n:
            raise ValueError(
                f"DirichletPartitioner: {parts} partitions of at least min_partition_size="
                f"{self._min_partition_size} need {parts * self._min_partition_size} examples; the "
                f"source has {n}. Lower min_partition_size or num_partitions.")
        classes = _sorted_labels(label_counts, self.label_column)
        rng = np.random.default_rng(seed=self._seed)
        avg = n / parts
        for attempt in range(11):
            sizes = np.zeros(parts, dtype=np.int64)
            plan = {}
            for k in classes:
                nk = label_counts[k]
                props = rng.dirichlet(self._alpha)
                if self._self_balancing:
                    props = np.where(sizes > avg, 0.0, props)
                    total = props.sum()
                    props = props / total if total > 0 else np.full(parts, 1.0 / parts)
                cuts = (np.cumsum(props) * nk).astype(int)[:-1]
                bounds = np.concatenate(([0], np.maximum.accumulate(np.minimum(cuts, nk)), [nk]))
                sizes += np.diff(bounds)
                plan[k] = (cuts.tolist(), list(range(parts)))
            if sizes.min() >= self._min_partition_size:
                self._plan = plan
                return
        raise ValueError(
            f"DirichletPartitioner: after 11 draws from Dir(alpha) some partition still had fewer than "
            f"min_partition_size={self._min_partition_size} examples (smallest: {int(sizes.min())}); "
            f"raise alpha, or lower min_partition_size or num_partitions")


class PathologicalPartitioner(_ByLabel):
    """flwr-datasets ``PathologicalPartitioner``: each partition gets
    ``num_classes_per_partition`` labels (``class_assignment_mode`` random,
    deterministic or first-deterministic, as flwr-datasets and with the same
    seeded choices); each label's examples are split evenly, in input order,
    among the partitions that have it.  Labels no partition drew are left out
    (with a warning, as in flwr-datasets)."""

    def __init__(self, num_partitions: int, partition_by: str, num_classes_per_partition: int,
                 class_assignment_mode: str = "random", shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        _check_positive("num_classes_per_partition", num_classes_per_partition)
        if class_assignment_mode not in ("random", "deterministic", "first-deterministic"):
            raise ValueError(f"class_assignment_mode must be 'random', 'deterministic' or "
                             f"'first-deterministic', got {class_assignment_mode!r}")
        self._num_partitions = num_partitions
        self.label_column = partition_by
        self._num_classes_per_partition = num_classes_per_partition
        self._class_assignment_mode = class_assignment_mode
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"num_partitions": self._num_partitions, "label_column": self.label_column,
                "num_classes_per_partition": self._num_classes_per_partition,
                "class_assignment_mode": self._class_assignment_mode, "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, label_counts):
        labels = _sorted_labels(label_counts, self.label_column)
        k, parts = self._num_classes_per_partition, self._num_partitions
        if k > len(labels):
            raise ValueError(f"PathologicalPartitioner: num_classes_per_partition={k} is more than the "
                             f"{len(labels)} labels in column {self.label_column!r}")
        if parts > num_examples:
            raise ValueError(f"PathologicalPartitioner: num_partitions={parts} is more than the "
                             f"{num_examples} examples of the source")
        rng = np.random.default_rng(seed=self._seed)
        mode = self._class_assignment_mode
        chosen = []
        for pid in range(parts):
            if mode == "first-deterministic":
                mine = [labels[pid % len(labels)]]
                while len(mine) < k:
                    lab = rng.choice(labels, size=1)[0]  # the same draws as flwr-datasets
                    lab = lab.item() if isinstance(lab, np.generic) else lab
                    if lab not in mine:
                        mine.append(lab)
            elif mode == "deterministic":
                mine = [labels[(pid + i) % len(labels)] for i in range(k)]
            else:
                mine = rng.choice(labels, size=k, replace=False).tolist()
            chosen.append(mine)
        users = {lab: [pid for pid in range(parts) if lab in chosen[pid]] for lab in labels}
        plan, unused = {}, []
        for lab in labels:
            owners, nk = users[lab], label_counts[lab]
            if not owners:
                unused.append(lab)
                plan[lab] = ([], [None])
                continue
            if len(owners) > nk:
                raise ValueError(
                    f"PathologicalPartitioner: label {lab!r} is assigned to {len(owners)} partitions but has "
                    f"only {nk} examples; lower num_partitions or num_classes_per_partition, or use "
                    f"class_assignment_mode='deterministic'")
            # np.array_split: the first nk % t pieces get one more example
            t = len(owners)
            div, mod = divmod(nk, t)
            cuts = list(np.cumsum([div + (i < mod) for i in range(t)])[:-1])
            plan[lab] = ([int(c) for c in cuts], owners)
        if unused:
            warnings.warn(f"PathologicalPartitioner: labels {unused} are in no partition; their "
                          f"examples are left out", stacklevel=2)
        self._plan = plan


class ShardPartitioner(Partitioner):
    """flwr-datasets ``ShardPartitioner``: the source sorted by label (stably)
    is cut into shards of ``shard_size`` consecutive examples, and each
    partition gets ``num_shards_per_partition`` shards drawn by a seeded
    permutation (the same draw as flwr-datasets).  Shards no partition drew
    are left out."""

    label_stats = True

    def __init__(self, num_partitions: int, partition_by: str, num_shards_per_partition: int | None = None,
                 shard_size: int | None = None, keep_incomplete_shard: bool = False,
                 shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        if num_shards_per_partition is None and shard_size is None:
            raise ValueError("ShardPartitioner: give num_shards_per_partition, shard_size, or both")
        if num_shards_per_partition is not None:
            _check_positive("num_shards_per_partition", num_shards_per_partition)
        if shard_size is not None:
            _check_positive("shard_size", shard_size)
        self._num_partitions = num_partitions
        self.label_column = partition_by
        self._num_shards_per_partition = num_shards_per_partition
        self._shard_size = shard_size
        self._keep_incomplete_shard = keep_incomplete_shard
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"num_partitions": self._num_partitions, "label_column": self.label_column,
                "num_shards_per_partition": self._num_shards_per_partition, "shard_size": self._shard_size,
                "keep_incomplete_shard": self._keep_incomplete_shard, "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, label_counts):
        n, parts = num_examples, self._num_partitions
        if parts > n:
            raise ValueError(f"ShardPartitioner: num_partitions={parts} is more than the {n} examples")
        size, per = self._shard_size, self._num_shards_per_partition
        if per is not None:
            used = parts * per
            per_array = [per] * parts
            if size is None:
                size = int(n / used)
                usable = math.ceil(n / size) if (size and self._keep_incomplete_shard) else (n // size if size else 0)
            else:
                usable = n // size
        else:
            used = math.ceil(n / size) if self._keep_incomplete_shard else n // size
            usable = used
            base = used // parts
            per_array = [base + (i < used - base * parts) for i in range(parts)]
        if size is None or size < 1 or usable < parts or used > usable:
            raise ValueError(
                f"ShardPartitioner: {n} examples make {usable} usable shards of size {size}, fewer than the "
                f"{used if per is not None else parts} needed for {parts} partitions; lower num_partitions, "
                f"num_shards_per_partition or shard_size")
        rng = np.random.default_rng(seed=self._seed)
        shards = rng.permutation(usable)[:used]
        owner = {}
        start = 0
        for pid, count in enumerate(per_array):
            for sh in shards[start:start + count]:
                owner[int(sh)] = pid
            start += count
        labels = _sorted_labels(label_counts, self.label_column)
        first, acc = {}, 0
        for lab in labels:
            first[lab] = acc
            acc += label_counts[lab]
        self._plan_first = first
        self._plan_owner = owner
        self._plan_size = size

    def assign(self, ex, index, rank):
        pos = self._plan_first[ex[self.label_column]] + rank
        return self._plan_owner.get(pos // self._plan_size)


class GroupedNaturalIdPartitioner(Partitioner):
    """flwr-datasets ``GroupedNaturalIdPartitioner(partition_by, group_size, mode, sort_unique_ids)``:
    the unique natural ids (in order of first appearance, or sorted) are cut
    into groups of ``group_size``; ``mode`` is allow-smaller, allow-bigger,
    drop-reminder or strict, as there."""

    def __init__(self, partition_by: str, group_size: int, mode: str = "allow-smaller",
                 sort_unique_ids: bool = False):
        _check_positive("group_size", group_size)
        if mode not in ("allow-smaller", "allow-bigger", "drop-reminder", "strict"):
            raise ValueError(f"mode must be allow-smaller, allow-bigger, drop-reminder or strict, got {mode!r}")
        self.label_column = partition_by
        self._group_size = group_size
        self._mode = mode
        self._sort_unique_ids = sort_unique_ids

    def params(self):
        p = {"label_column": self.label_column, "group_size": self._group_size, "mode": self._mode,
             "sort_unique_ids": self._sort_unique_ids}
        if hasattr(self, "_num_partitions"):  # known once fitted
            p["num_partitions"] = self._num_partitions
        return p

    def fit(self, num_examples, label_counts):
        ids = list(label_counts)
        g, mode = self._group_size, self._mode
        if mode != "allow-smaller" and g > len(ids):
            raise ValueError(f"GroupedNaturalIdPartitioner: group_size={g} is more than the {len(ids)} "
                             f"unique ids (only mode='allow-smaller' allows that)")
        if self._sort_unique_ids:
            ids = _sorted_labels(label_counts, self.label_column)
        rem, groups = len(ids) % g, len(ids) // g
        if groups == 0 and mode == "allow-smaller":
            groups, rem = 1, 0
        if mode == "strict" and rem:
            raise ValueError(f"GroupedNaturalIdPartitioner: strict mode needs the {len(ids)} unique ids "
                             f"to divide by group_size={g} (remainder {rem})")
        if mode == "allow-bigger":
            pieces = np.array_split(np.arange(len(ids)), groups)
        else:
            pieces = np.array_split(np.arange(groups * g if rem else len(ids)), groups)
            if mode == "allow-smaller" and rem:
                pieces.append(np.arange(groups * g, len(ids)))
        owner = {}
        for pid, piece in enumerate(pieces):
            for i in piece:
                owner[ids[i]] = pid
        self._plan_owner = owner
        self._num_partitions = len(pieces)

    def assign(self, ex, index, rank):
        return self._plan_owner.get(ex[self.label_column])


class InnerDirichletPartitioner(Partitioner):
    """flwr-datasets ``InnerDirichletPartitioner(partition_sizes, partition_by, alpha)``:
    partition sizes are given; each partition draws label priors from
    Dir(alpha) and fills its slots one example at a time (the same seeded
    draws as flwr-datasets, so the same partitions).  Labels are taken in
    sorted order (flwr-datasets expects them to be 0..k-1)."""

    label_stats = True

    def __init__(self, partition_sizes, partition_by: str, alpha, shuffle: bool = True,
                 seed: int | None = 42):
        self._partition_sizes = _check_sizes(partition_sizes)
        self._num_partitions = len(self._partition_sizes)
        self.label_column = partition_by
        self._alpha = alpha
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"partition_sizes": self._partition_sizes, "num_partitions": self._num_partitions,
                "label_column": self.label_column, "alpha": self._alpha, "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, label_counts):
        if sum(self._partition_sizes) != num_examples:
            raise ValueError(f"InnerDirichletPartitioner: the partition sizes add up to "
                             f"{sum(self._partition_sizes)}; they must add up to the {num_examples} examples")
        labels = _sorted_labels(label_counts, self.label_column)
        k = len(labels)
        a = self._alpha
        alpha = np.full(k, float(a)) if np.isscalar(a) else np.asarray(a, dtype=float).ravel()
        if alpha.shape != (k,) or not (alpha > 0).all():
            raise ValueError(f"alpha must be a positive number or {k} positive numbers (one per label)")
        rng = np.random.default_rng(seed=self._seed)
        priors = rng.dirichlet(alpha=alpha, size=self._num_partitions)
        class_sizes = [label_counts[lab] for lab in labels]
        owners = [np.zeros(n, dtype=np.int32) for n in class_sizes]
        left = dict(enumerate(self._partition_sizes))
        not_full = list(range(self._num_partitions))
        classes = list(range(k))
        remaining = num_examples
        while remaining:
            pid = rng.choice(not_full)
            if left[pid] == 0:
                not_full.pop(not_full.index(pid))
                continue
            left[pid] -= 1
            remaining -= 1
            probs = priors[pid]
            while True:
                c = rng.choice(classes, p=probs)
                if class_sizes[c] == 0:
                    priors[:, c] = 0
                    priors = priors / priors.sum(axis=1, keepdims=True)
                    probs = priors[pid]
                    continue
                class_sizes[c] -= 1
                owners[c][class_sizes[c]] = pid  # flwr-datasets takes each label's examples from the end
                break
        self._plan = {lab: owners[i] for i, lab in enumerate(labels)}

    def assign(self, ex, index, rank):
        return int(self._plan[ex[self.label_column]][rank])


class ContinuousPartitioner(Partitioner):
    """flwr-datasets ``ContinuousPartitioner(num_partitions, partition_by, strictness)``:
    examples are sorted by their standardized numeric property blended with
    seeded Gaussian noise (``strictness`` 1: by the property alone, 0: IID),
    and the sorted order is cut into equal parts.  The same draws as
    flwr-datasets, so the same partitions.  The first pass reads the column's
    values (4 bytes an example)."""

    collect_values = True

    def __init__(self, num_partitions: int, partition_by: str, strictness: float,
                 shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        if not 0 <= strictness <= 1:
            raise ValueError(f"strictness must be between 0 and 1, got {strictness!r}")
        self._num_partitions = num_partitions
        self.label_column = partition_by
        self._strictness = float(strictness)
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"num_partitions": self._num_partitions, "label_column": self.label_column,
                "strictness": self._strictness, "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, values):
        if self._num_partitions > num_examples:
            raise ValueError(f"ContinuousPartitioner: num_partitions={self._num_partitions} is more than "
                             f"the {num_examples} examples")
        try:
            v = np.array([np.nan if x is None else x for x in values], dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"ContinuousPartitioner: column {self.label_column!r} must hold numbers") from None
        if np.isnan(v).any():
            raise ValueError(f"ContinuousPartitioner: column {self.label_column!r} holds None or NaN "
                             f"(first at example {int(np.flatnonzero(np.isnan(v))[0])})")
        std = np.std(v)
        if std < 1e-6 and self._strictness > 0:
            raise ValueError(f"ContinuousPartitioner: column {self.label_column!r} is constant "
                             f"(std={std}); use strictness=0 for an IID split")
        z = (v - np.mean(v)) / std if std > 0 else np.zeros_like(v)
        noise = np.random.default_rng(self._seed).normal(loc=0, scale=1, size=len(z))
        order = np.argsort(self._strictness * z + (1 - self._strictness) * noise)
        owner = np.empty(len(v), dtype=np.int32)
        for pid, idx in enumerate(np.array_split(order, self._num_partitions)):
            owner[idx] = pid
        self._plan_owner = owner

    def assign(self, ex, index, rank):
        return int(self._plan_owner[index])


class DirichletProcessPartitioner(Partitioner):
    """Dataset Grouper's label-skew partitioning, seeded: each label draws its
    own categorical distribution over ``num_partitions`` groups from
    Dir(alpha), and each example independently picks its group from its
    label's distribution.  No example waits for another, so assignment is
    embarrassingly parallel; the randomness comes from (seed, label) and
    (seed, example index), so it is the same for any worker count."""

    label_stats = True

    def __init__(self, num_partitions: int, partition_by: str, alpha: float = 1.0, seed: int = 0):
        _check_positive("num_partitions", num_partitions)
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}")
        self._num_partitions = num_partitions
        self.label_column = partition_by
        self._alpha = float(alpha)
        self._seed = int(seed)

    def params(self):
        return {"num_partitions": self._num_partitions, "label_column": self.label_column, "alpha": self._alpha,
                "seed": self._seed}

    def fit(self, num_examples, label_counts):
        cdfs = {}
        for lab in label_counts:
            h = hashlib.blake2b(f"{self._seed}\0{json.dumps(lab, default=str)}".encode(), digest_size=8)
            rng = np.random.default_rng(int.from_bytes(h.digest(), "big"))
            cdfs[lab] = np.cumsum(rng.dirichlet(np.full(self._num_partitions, self._alpha))).tolist()
        self._plan = cdfs

    def assign(self, ex, index, rank):
        h = hashlib.blake2b(f"{self._seed}\0{index}".encode(), digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2.0**64
        cdf = self._plan[ex[self.label_column]]
        return min(bisect_right(cdf, u), self._num_partitions - 1)


class DistributionPartitioner(_ByLabel):
    """flwr-datasets ``DistributionPartitioner(distribution_array, num_partitions,
    num_unique_labels_per_partition, partition_by, preassigned_num_samples_per_label,
    rescale)``: row ``l`` of ``distribution_array`` (labels in sorted order)
    gives how label ``l``'s examples are cut into pieces; partition ``p``
    takes the next piece of each of its labels (the labels ``p``, ``p+1``,
    ... in rotation).  The same seeded draws as flwr-datasets."""

    def __init__(self, distribution_array, num_partitions: int, num_unique_labels_per_partition: int,
                 partition_by: str, preassigned_num_samples_per_label: int, rescale: bool = True,
                 shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        _check_positive("num_unique_labels_per_partition", num_unique_labels_per_partition)
        arr = np.asarray(distribution_array)
        if arr.ndim != 2:
            raise ValueError(f"distribution_array must be 2-dimensional, got shape {arr.shape}")
        self._distribution_array = arr
        self._num_partitions = num_partitions
        self._num_unique_labels_per_partition = num_unique_labels_per_partition
        self.label_column = partition_by
        self._preassigned_num_samples_per_label = int(preassigned_num_samples_per_label)
        self._rescale = rescale
        self._shuffle = shuffle
        self._seed = seed

    def params(self):
        return {"distribution_array": self._distribution_array, "num_partitions": self._num_partitions,
                "num_unique_labels_per_partition": self._num_unique_labels_per_partition,
                "label_column": self.label_column,
                "preassigned_num_samples_per_label": self._preassigned_num_samples_per_label,
                "rescale": self._rescale, "shuffle": self._shuffle, "seed": self._seed}

    def fit(self, num_examples, label_counts):
        labels = _sorted_labels(label_counts, self.label_column)
        k, parts, per = len(labels), self._num_partitions, self._num_unique_labels_per_partition
        if per > k:
            raise ValueError(f"DistributionPartitioner: num_unique_labels_per_partition={per} is more than "
                             f"the {k} labels in column {self.label_column!r}")
        cols = int(per * parts / k)
        arr = self._distribution_array
        if arr.shape != (k, cols):
            raise ValueError(f"DistributionPartitioner: distribution_array must have shape ({k}, {cols}) "
                             f"(labels x num_unique_labels_per_partition * num_partitions / labels), "
                             f"got {arr.shape}")
        counts = np.array([label_counts[lab] for lab in labels], dtype=float)
        if self._rescale:
            dist = arr / np.sum(arr, axis=-1, keepdims=True)
            pre = self._preassigned_num_samples_per_label * cols
            if pre > counts.min():
                raise ValueError(
                    f"DistributionPartitioner: preassigning {self._preassigned_num_samples_per_label} examples "
                    f"of each label to each of {cols} pieces needs {pre} examples of every label; label "
                    f"{labels[int(counts.argmin())]!r} has {int(counts.min())}")
            matrix = np.floor(dist * (counts - pre)[:, np.newaxis]).astype(int) + self._preassigned_num_samples_per_label
        else:
            matrix = arr.astype(int)
            over = [lab for lab, row, c in zip(labels, matrix, counts) if row.sum() > c]
            if over:
                raise ValueError(f"DistributionPartitioner: distribution_array asks for more examples of "
                                 f"label {over[0]!r} than the source has")
        rng = np.random.default_rng(seed=self._seed)
        users = {lab: [] for lab in labels}
        for pid in range(parts):
            for lab in np.roll(np.array(labels, dtype=object), -pid)[:per]:
                users[lab].append(pid)
        plan = {}
        for lab, row in zip(labels, matrix):
            cuts = np.cumsum(row).tolist()
            owners = [users[lab][j] if j < len(users[lab]) else None for j in range(cols)]
            extra = None
            if self._rescale:  # the remainder joins a random piece, as in flwr-datasets
                extra = owners[int(rng.integers(0, cols))]
            plan[lab] = (cuts, owners + [extra])
        self._plan = plan


# ----------------------------------------------------------------------------
# Vertical partitioners: columns split among parties
# ----------------------------------------------------------------------------
_ACTIVE_MODES = ("add_to_first", "add_to_last", "create_as_first", "create_as_last", "add_to_all")


def _names(x) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    if not all(isinstance(c, str) for c in x):
        raise TypeError("column names must be strings")
    return list(x)


class _Vertical:
    """Splits a source's columns among parties (``partition_vertical``)."""

    def __init__(self, active_party_columns, active_party_columns_mode, drop_columns, shared_columns,
                 shuffle, seed):
        if not (isinstance(active_party_columns_mode, int) or active_party_columns_mode in _ACTIVE_MODES):
            raise ValueError(f"active_party_columns_mode must be an int or one of {_ACTIVE_MODES}")
        self._active_party_columns = _names(active_party_columns)
        self._active_party_columns_mode = active_party_columns_mode
        self._drop_columns = _names(drop_columns)
        self._shared_columns = _names(shared_columns)
        self._shuffle = shuffle
        self._seed = seed

    def _split(self, columns: list) -> list:
        raise NotImplementedError

    def party_columns(self, all_columns: list) -> list:
        """The columns of each party, as flwr-datasets would give them."""
        for c in self._shared_columns + self._active_party_columns:
            if c not in all_columns:
                raise ValueError(f"column {c!r} not found in the source (columns: {all_columns})")
        skip = set(self._drop_columns) | set(self._shared_columns) | set(self._active_party_columns)
        columns = [c for c in all_columns if c not in skip]
        if self._shuffle:
            np.random.default_rng(seed=self._seed).shuffle(columns)
        parts = self._split(columns)
        active, mode = self._active_party_columns, self._active_party_columns_mode
        if active:
            if isinstance(mode, int):
                if not 0 <= mode < len(parts):
                    raise ValueError(f"active_party_columns_mode={mode} is not a party index 0..{len(parts) - 1}")
                parts[mode].extend(active)
            elif mode == "add_to_first":
                parts[0].extend(active)
            elif mode == "add_to_last":
                parts[-1].extend(active)
            elif mode == "create_as_first":
                parts.insert(0, list(active))
            elif mode == "create_as_last":
                parts.append(list(active))
            else:
                for p in parts:
                    p.extend(active)
        for p in parts:
            p.extend(self._shared_columns)
        return parts

    def params(self) -> dict:
        return {"active_party_columns": self._active_party_columns,
                "active_party_columns_mode": self._active_party_columns_mode, "drop_columns": self._drop_columns,
                "shared_columns": self._shared_columns, "shuffle": self._shuffle, "seed": self._seed}

    def describe(self) -> dict:
        return {"type": type(self).__name__, **{k: _plain(v) for k, v in self.params().items()}}


class VerticalEvenPartitioner(_Vertical):
    """flwr-datasets ``VerticalEvenPartitioner``: the columns (less dropped,
    shared and active-party ones; shuffled with ``seed``) split evenly."""

    def __init__(self, num_partitions: int, active_party_columns=None, active_party_columns_mode="add_to_last",
                 drop_columns=None, shared_columns=None, shuffle: bool = True, seed: int | None = 42):
        _check_positive("num_partitions", num_partitions)
        self._num_partitions = num_partitions
        super().__init__(active_party_columns, active_party_columns_mode, drop_columns, shared_columns,
                         shuffle, seed)

    def params(self):
        return {"num_partitions": self._num_partitions, **super().params()}

    def _split(self, columns):
        div, mod = divmod(len(columns), self._num_partitions)
        out, start = [], 0
        for i in range(self._num_partitions):
            end = start + div + (i < mod)
            out.append(columns[start:end])
            start = end
        return out


class VerticalSizePartitioner(_Vertical):
    """flwr-datasets ``VerticalSizePartitioner``: ``partition_sizes`` are column
    counts (ints adding up to the columns divided) or fractions (floats adding
    up to 1; the last party takes the remainder)."""

    def __init__(self, partition_sizes, active_party_columns=None, active_party_columns_mode="add_to_last",
                 drop_columns=None, shared_columns=None, shuffle: bool = True, seed: int | None = 42):
        sizes = list(partition_sizes)
        if not sizes or not (all(isinstance(s, int) and s >= 0 for s in sizes)
                             or all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in sizes)):
            raise ValueError("partition_sizes must be all ints >= 0 or all floats in [0, 1]")
        if isinstance(sizes[0], float) and abs(sum(sizes) - 1.0) > 1e-6:
            raise ValueError(f"float partition_sizes must add up to 1.0, got {sum(sizes)}")
        self._partition_sizes = sizes
        super().__init__(active_party_columns, active_party_columns_mode, drop_columns, shared_columns,
                         shuffle, seed)

    def params(self):
        return {"partition_sizes": self._partition_sizes, **super().params()}

    def _split(self, columns):
        sizes, n = self._partition_sizes, len(columns)
        if isinstance(sizes[0], int):
            if sum(sizes) != n:
                raise ValueError(f"partition_sizes add up to {sum(sizes)} columns; the {n} columns to divide "
                                 f"are {columns} (shared, dropped and active-party columns are not divided)")
            counts = sizes
        else:
            counts = [int(math.floor(f * n)) for f in sizes[:-1]]
            counts.append(n - sum(counts))
        out, start = [], 0
        for c in counts:
            out.append(columns[start:start + c])
            start += c
        return out
