"""A grouped dataset as a ``torchdata.nodes`` source.

``torchdata.nodes`` builds loading pipelines from nodes (``BaseNode``:
``next()``, ``get_state()``, ``reset(state)``) such as ``ParallelMapper``,
``Batcher``, ``Prefetcher`` and ``Loader``.  :func:`as_node` turns a
:class:`~torch_grouper.GroupedDataset` (or a ``map_groups`` / split view of
one) into a node yielding its groups, and its flat view
(``ds.examples(...)``) into a node yielding ``(group_id, example)``::

    import torchdata.nodes as tn
    from torch_grouper.nodes import as_node

    node = as_node(tg.GroupedDataset(path, shuffle=True, seed=0))
    node = tn.ParallelMapper(node, train_one_client, num_workers=4)
    loader = tn.Loader(tn.Prefetcher(tn.Batcher(node, 8, drop_last=False), 2))
    for batch in loader: ...
    sd = loader.state_dict()            # later: loader.load_state_dict(sd)

Resume is exact: a group node's state is the dataset's own ``state_dict()``
(epoch, and how many groups this reader has delivered in it), so
``reset(state)`` continues with exactly the groups not yet delivered, in the
saved epoch's order, recomputed from the index (no replay).  Epochs: the first
``reset(None)`` starts the dataset's epoch (``ds.set_epoch(e)`` before making
the node); every later ``reset(None)`` starts the next one, so with
``shuffle=True`` each pass of a ``Loader`` has a new seeded order, and a state
saved at the end of an epoch continues with the next.  The node reads as one
reader: rank ``rank`` of ``world_size`` when the dataset was made with them
(or under ``torch.distributed``), each rank a disjoint share of the groups.

The node holds its own copy of the dataset, so the dataset passed in is never
moved.  Groups it yields stream from their shard when consumed (safe from
``ParallelMapper`` threads); a group pickled to a process worker travels
materialized, as in a DataLoader worker.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Dict, Optional

from torchdata.nodes import BaseNode

from .dataset import FlatView, GroupedDataset

__all__ = ["GroupNode", "ExampleNode", "as_node"]


def as_node(data) -> BaseNode:
    """A ``torchdata.nodes`` source over ``data``: a :class:`GroupNode` for a
    GroupedDataset (or view), an :class:`ExampleNode` for ``ds.examples(...)``."""
    if isinstance(data, GroupedDataset):
        return GroupNode(data)
    if isinstance(data, FlatView):
        return ExampleNode(data)
    raise TypeError(f"as_node takes a GroupedDataset or its examples() view, got {type(data).__name__}")


class _EpochNode(BaseNode):
    """Shared epoch bookkeeping: the first ``reset(None)`` starts the
    dataset's own epoch, each later one the next epoch."""

    def __init__(self, ds: GroupedDataset):
        super().__init__()
        if not isinstance(ds, GroupedDataset):
            raise TypeError(f"expected a GroupedDataset, got {type(ds).__name__}")
        self.dataset = copy.copy(ds)  # shares the opened index and reader; epoch and position are ours
        self.dataset.load_state_dict(self._start_state(ds.epoch))  # drops any resume pending on ``ds``
        self._epoch = ds.epoch
        self._started = False

    def _start_state(self, epoch: int) -> dict:
        """The dataset's state at the start of ``epoch`` for this reader."""
        return {**self.dataset.state_dict(), "epoch": int(epoch), "delivered": 0}

    def _begin(self, initial_state: Optional[dict]) -> dict:
        """The dataset state to start from."""
        if initial_state is None:
            if self._started:
                self._epoch += 1
            self._started = True
            return self._start_state(self._epoch)
        self._started = True
        return initial_state

    def _load(self, ds_state: dict) -> None:
        if not isinstance(ds_state, dict):
            raise ValueError(f"state must be a dict from get_state(), got {type(ds_state).__name__}")
        self.dataset.load_state_dict(ds_state)  # checks dataset, seed, counts
        mine = self.dataset.state_dict()
        if (ds_state["reader"], ds_state["readers"]) != (mine["reader"], mine["readers"]):
            raise ValueError(f"state was saved by reader {ds_state['reader']} of {ds_state['readers']}; this node is "
                             f"reader {mine['reader']} of {mine['readers']} (resume with the same rank and world size)")
        self._epoch = int(ds_state["epoch"])


class GroupNode(_EpochNode):
    """The groups of a GroupedDataset (after its ``map_groups`` functions) as a
    ``torchdata.nodes`` source; its state is the dataset's ``state_dict()``."""

    def __init__(self, ds: GroupedDataset):
        super().__init__(ds)
        self._it = None
        self._state: dict = {}

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        st = self._begin(initial_state)
        self._load(st)
        self._state = {**self.dataset.state_dict(), "epoch": int(st["epoch"]), "delivered": int(st["delivered"])}
        self._it = iter(self.dataset)

    def next(self):
        item = next(self._it)
        self._state = self.dataset.state_dict()  # delivered now counts ``item``
        return item

    def get_state(self) -> Dict[str, Any]:
        return dict(self._state)


class ExampleNode(_EpochNode):
    """The examples of ``ds.examples(shuffle_buffer=..., seed=...)`` as
    ``(group_id, example)`` from a ``torchdata.nodes`` source.

    State: ``{"dataset": <the dataset's state>, "taken": n}``.  Without a
    shuffle buffer it is the position of the current group and how many of its
    examples were yielded, so resuming reads from that group on.  With a
    shuffle buffer the output depends on every example read before, so the
    state is the epoch's start and the number of examples yielded, and a resume
    reads the epoch again up to that point (exact, at the cost of that read)."""

    def __init__(self, view: FlatView):
        if not isinstance(view, FlatView):
            raise TypeError(f"expected ds.examples(...), got {type(view).__name__}")
        super().__init__(view.ds)
        self.shuffle_buffer, self.seed = int(view.shuffle_buffer), view.seed
        self._it = None
        self._state: dict = {}

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is not None:
            if not isinstance(initial_state, dict) or not {"dataset", "taken"} <= initial_state.keys():
                raise ValueError(f"state must be a dict from ExampleNode.get_state(), got {initial_state!r:.200}")
            taken = initial_state["taken"]
            if isinstance(taken, bool) or not isinstance(taken, int) or taken < 0:
                raise ValueError(f"state['taken'] must be an int >= 0, got {taken!r}")
            if initial_state.get("buffered", False) != bool(self.shuffle_buffer):
                saved = "with" if initial_state.get("buffered", False) else "without"
                raise ValueError(f"state was saved {saved} a shuffle buffer; this node has "
                                 f"shuffle_buffer={self.shuffle_buffer}")
            st = self._begin(initial_state["dataset"])
        else:
            st, taken = self._begin(None), 0
        self._load(st)
        done = bool(initial_state and initial_state.get("done"))
        self._state = {"dataset": st, "taken": taken, "buffered": bool(self.shuffle_buffer), "done": done}
        if done:
            self._it = iter(())
        elif self.shuffle_buffer:
            view = self.dataset.examples(shuffle_buffer=self.shuffle_buffer, seed=self.seed)
            self._it = self._buffered(itertools.islice(iter(view), taken, None), st, taken)
        else:
            self._it = self._unbuffered(taken)

    def _buffered(self, it, start: dict, taken: int):
        for item in it:
            taken += 1
            self._state = {"dataset": start, "taken": taken, "buffered": True, "done": False}
            yield item
        self._state = {"dataset": start, "taken": taken, "buffered": True, "done": True}

    def _unbuffered(self, skip: int):
        ds = self.dataset
        for g in ds:
            after = ds.state_dict()
            before = {**after, "delivered": after["delivered"] - 1}  # the position of ``g``
            taken = 0
            for ex in g:
                taken += 1
                if taken <= skip:
                    continue
                self._state = {"dataset": before, "taken": taken, "buffered": False, "done": False}
                yield g.id, ex
            if taken < skip:
                raise ValueError(f"state says {skip} examples of group {g.id!r} were yielded, but it has {taken} "
                                 f"(a state from another dataset?)")
            skip = 0
            self._state = {"dataset": after, "taken": 0, "buffered": False, "done": False}

    def next(self):
        return next(self._it)

    def get_state(self) -> Dict[str, Any]:
        return dict(self._state)
