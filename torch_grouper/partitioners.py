"""Key functions: what decides an example's group.

``partition(source, key=...)`` accepts a column name, any callable
``example -> str | int | bytes`` (lambdas work: the engine pickles with dill),
or one of the key objects below.  Key objects are plain picklable callables
with a ``describe()`` used in the dataset manifest.
"""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit


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
