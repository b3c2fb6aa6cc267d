"""docs/ARCHITECTURE.md's extension examples are code users copy: run each one."""
import os
import re
import sys
import types

import pytest

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "ARCHITECTURE.md")
BLOCK = re.compile(r"<!-- example: (\S+) -->\s*```python\n(.*?)```", re.S)


def examples() -> dict:
    with open(DOC, encoding="utf-8") as f:
        return dict(BLOCK.findall(f.read()))


def test_every_extension_point_has_an_example():
    assert set(examples()) == {"source", "partitioner", "engine", "storage", "transform"}


@pytest.mark.parametrize("name", sorted(examples()))
def test_example_runs(name, tmp_path, monkeypatch):
    from torch_grouper import sources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "FILE_SLICES", sources.FILE_SLICES)  # the source example adds one
    code = examples()[name]
    assert len(code.strip().splitlines()) <= 30, f"the {name} example should stay short"
    # a real module, so that classes the example defines pickle into worker processes
    mod = types.ModuleType(f"architecture_example_{name}")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exec(compile(code, f"docs/ARCHITECTURE.md ({name} example)", "exec"), mod.__dict__)
