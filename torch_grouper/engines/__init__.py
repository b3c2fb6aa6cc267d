"""Engines run a partition's steps (``engines/steps.py``): ``LocalEngine``
(``engines/local.py``) in a process pool on this machine, ``RayEngine``
(``engines/ray.py``, needs Ray) as Ray tasks on a cluster.  Any object with
``run(job) -> RunResult``, ``num_workers`` and ``slice_bytes`` is an engine
(``steps.Engine``)."""
from __future__ import annotations

from .local import LocalEngine
from .steps import Engine, Job, RunResult


def resolve_engine(engine, num_workers: int | None = None):
    """``partition()``'s ``engine=`` argument as an engine object: ``"local"``
    makes a ``LocalEngine(num_workers)``, ``"ray"`` a ``RayEngine`` (on
    ``RAY_ADDRESS`` or a local Ray; ``num_workers``: how finely the source is
    cut); an engine object is used as it is (its own ``num_workers``, so
    ``num_workers`` must then be None)."""
    if isinstance(engine, str):
        if engine == "ray":
            from .ray import RayEngine

            return RayEngine(num_workers=num_workers)
        if engine != "local":
            raise ValueError(f"engine must be 'local', 'ray' or an engine object, got {engine!r}")
        return LocalEngine(num_workers)
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be 'local', 'ray' or an object with run(job), num_workers and slice_bytes "
                        f"(torch_grouper.engines.Engine), not {type(engine).__name__}")
    if num_workers is not None:
        raise ValueError(f"num_workers={num_workers} was given with engine={engine!r}; give the engine its "
                         f"number of workers")
    return engine


__all__ = ["Engine", "Job", "LocalEngine", "RunResult", "resolve_engine"]
