"""Array fields from a dataset's features: which fields come back as numpy arrays.

Examples are stored as JSON (a list of numbers stays a JSON list), so a
vector or matrix field would come back as nested Python lists, which torch's
``default_collate`` turns into a list of ``dim`` tensors of shape ``[batch]``.
When the manifest's HF features declare a field as a numeric
``Sequence``/``List`` (nested for more dimensions) or an ``Array2D``..``Array5D``,
readers return it as a numpy array of that dtype, so collation stacks it into
one ``[batch, ...]`` tensor, as for a map-style HF dataset with
``with_format("numpy")``.  Only reading changes; the stored bytes do not.
"""
from __future__ import annotations

import numpy as np

_NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64"}


def _numeric_dtype(f) -> str | None:
    """The numpy dtype of a (nested) numeric list / array feature, else None."""
    if not isinstance(f, dict):
        return None
    t = f.get("_type")
    if t in ("Array2D", "Array3D", "Array4D", "Array5D"):
        return f.get("dtype") if f.get("dtype") in _NUMERIC else None
    if t in ("Sequence", "List", "LargeList"):
        inner = f.get("feature")
        if isinstance(inner, dict) and inner.get("_type") == "Value":
            return inner.get("dtype") if inner.get("dtype") in _NUMERIC else None
        return _numeric_dtype(inner)
    return None


def array_fields(features: dict | None) -> dict:
    """``{field: numpy dtype}`` of the top-level array fields of HF features
    given as ``Features.to_dict()``."""
    if not features:
        return {}
    out = {}
    for name, f in features.items():
        dt = _numeric_dtype(f)
        if dt is not None:
            out[name] = dt
    return out


class ToArrays:
    """Turn the declared array fields of each example into numpy arrays (a
    ragged value, which no array can hold, is left as it is)."""

    def __init__(self, fields: dict):
        self.fields = fields

    def example(self, ex: dict) -> dict:
        for k, dt in self.fields.items():
            v = ex.get(k)
            if v is not None and not isinstance(v, np.ndarray):
                try:
                    ex[k] = np.asarray(v, dtype=dt)
                except (ValueError, TypeError):
                    pass
        return ex


def features_dict(features) -> dict | None:
    """HF ``Features`` (or its dict form) as a plain dict for the manifest."""
    if features is None:
        return None
    if hasattr(features, "to_dict"):
        return features.to_dict()
    if isinstance(features, dict):
        import datasets

        return datasets.Features.from_dict(features).to_dict()  # checks it
    raise TypeError(f"features must be a datasets.Features or its dict form, got {type(features).__name__}")
