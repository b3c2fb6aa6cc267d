"""Progress of ``partition``: totals when the length is known, final counts
that stay, plain lines outside a terminal (``torch_grouper.progress``)."""
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import torch_grouper as tg
from torch_grouper import progress
from torch_grouper.partitioners import PathologicalPartitioner
from torch_grouper.sources import as_source

N = 1_000
EXS = [{"i": i, "g": i % 7, "label": i % 5} for i in range(N)]


class Tty(io.StringIO):
    def isatty(self):
        return True


def run(monkeypatch, source, key=lambda e: e["g"], stream=None, **kw):
    err = stream if stream is not None else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    out = kw.pop("out")
    m = tg.partition(source, key, out, num_workers=2, **kw)
    return m, err.getvalue()


def test_a_list_has_a_total_and_a_log_gets_plain_final_lines(monkeypatch, tmp_path):
    m, log = run(monkeypatch, EXS, out=tmp_path / "o")
    assert "\r" not in log
    lines = log.splitlines()
    assert re.fullmatch(rf"partition: read: {N:,}/{N:,} ex \(100%\) in [\d.]+ s, [\d,]+ ex/s", lines[-2])
    assert re.fullmatch(r"partition: write: (\d+)/\1 task \(100%\) in .*", lines[-1])
    assert m["num_examples"] == N


def test_parquet_row_counts_give_the_total(monkeypatch, tmp_path):
    for k in range(3):  # 3 files, several row groups each
        pq.write_table(pa.Table.from_pylist(EXS[k * 300:(k + 1) * 300 + (100 if k == 2 else 0)]),
                       tmp_path / f"p{k}.parquet", row_group_size=70)
    assert as_source(str(tmp_path / "*.parquet"), parallelism=2).num_examples_hint() == N
    _, log = run(monkeypatch, str(tmp_path / "*.parquet"), out=tmp_path / "o")
    assert f"partition: read: {N:,}/{N:,} ex (100%)" in log


def test_an_hf_dataset_has_a_total(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(EXS)
    assert as_source(ds, parallelism=2).num_examples_hint() == N
    _, log = run(monkeypatch, ds, out=tmp_path / "o")
    assert f"partition: read: {N:,}/{N:,} ex (100%)" in log


def test_json_lines_count_examples_and_slices(monkeypatch, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in EXS))
    assert as_source(str(src)).num_examples_hint() is None
    _, log = run(monkeypatch, str(src), out=tmp_path / "o")
    read = [ln for ln in log.splitlines() if ln.startswith("partition: read")]
    assert len(read) == 1 and re.fullmatch(rf"partition: read: {N:,} ex in .* \[(\d+)/\1 slices\]", read[0])


def test_a_partitioners_first_pass_gives_the_total_with_left_out_examples(monkeypatch, tmp_path):
    src = tmp_path / "a.jsonl"  # no length hint of its own
    src.write_text("".join(json.dumps(e) + "\n" for e in EXS))
    with pytest.warns(UserWarning, match="left out"):
        m, log = run(monkeypatch, str(src), key=PathologicalPartitioner(2, "label", 1, seed=1),
                     out=tmp_path / "o")
    assert 0 < m["num_dropped"] < N and m["num_examples"] + m["num_dropped"] == N
    assert f"partition: first pass: {N:,} examples, 5 labels" in log
    assert f"partition: read: {N:,}/{N:,} ex (100%)" in log  # every example read, kept or not


def test_on_a_terminal_the_bars_stay_at_their_final_counts(monkeypatch, tmp_path):
    _, log = run(monkeypatch, EXS, stream=Tty(), out=tmp_path / "o")
    # tqdm redraws with \r; with leave=True the last state of each bar stays and ends its line
    finals = [seg.split("\r")[-1] for seg in log.split("\n") if seg.strip()]
    assert len(finals) == 2
    assert finals[0].startswith("partition: read: 100%") and f"{N}/{N}" in finals[0]
    assert finals[1].startswith("partition: write: 100%")
    assert log.endswith("\n")


def test_no_progress_writes_nothing(monkeypatch, tmp_path):
    _, log = run(monkeypatch, EXS, out=tmp_path / "o", progress=False)
    assert log == ""


def test_log_lines_at_the_interval(monkeypatch):
    f = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    with progress.bar("step", total=3, unit="ex", file=f) as b:
        for _ in range(3):
            b.update(1)
    lines = f.getvalue().splitlines()
    assert lines[:3] == ["step: 1/3 ex (33%)", "step: 2/3 ex (67%)", "step: 3/3 ex (100%)"]
    assert lines[3].startswith("step: 3/3 ex (100%) in ") and len(lines) == 4
