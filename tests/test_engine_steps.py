"""The engine-neutral steps, run in this process without any pool: an engine
built from them alone writes the same bytes as the local engine."""
import itertools
import json
import pickle
import tempfile

import pytest

import torch_grouper as tg
from helpers import digest
from torch_grouper.engines import Engine, LocalEngine, RunResult, resolve_engine
from torch_grouper.engines import steps
from torch_grouper.partitioners import DirichletPartitioner, fit_partitioner
from torch_grouper.sources import as_source


class SequentialEngine:
    """The whole engine interface, in this process, from the public steps."""

    num_workers, slice_bytes = 1, 50_000

    def run(self, job):
        with tempfile.TemporaryDirectory(dir=job.tmp_dir) as spill:
            ctx = steps.MapContext(job.source, job.keyfn, spill, job.memory_budget, job.label_column)
            starts = itertools.repeat(None)
            if steps.needs_fit(job.keyfn):
                counts = [steps.count_slice(job.keyfn, s) for s in steps.work_slices(job.source)]
                starts = fit_partitioner(job.keyfn, counts).starts
            totals = steps.MapTotals()
            for s, start in zip(steps.work_slices(job.source), starts):
                totals.add(steps.map_slice(ctx, s, start))
            tasks = steps.plan_write(job, totals.runs, totals.id_type or "str", job.memory_budget, spill)
            job.before_write()
            written = [steps.write_task(t) for t in tasks]
        return RunResult(totals.examples, totals.id_type or "str", written, totals.dropped)


def corpus(tmp_path, n=3000):
    exs = [{"url": f"https://s{(i * 7919) % 53}.example.org/{i}", "text": "a b " * (i % 30), "label": i % 7,
            "i": i} for i in range(n)]
    p = tmp_path / "src.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in exs))
    return p, exs


def test_sequential_engine_writes_the_bytes_of_the_local_engine(tmp_path):
    src, _ = corpus(tmp_path)
    assert isinstance(SequentialEngine(), Engine) and isinstance(LocalEngine(2), Engine)
    kw = dict(shard_bytes=60_000, memory_budget=150_000, progress=False)
    m_seq = tg.partition(src, tg.UrlDomainKey(), tmp_path / "seq", engine=SequentialEngine(), **kw)
    tg.partition(src, tg.UrlDomainKey(), tmp_path / "loc",
                         engine=LocalEngine(num_workers=2, slice_bytes=20_000), **kw)
    assert len(m_seq["shards"]) > 3 and m_seq["num_examples"] == 3000
    assert digest(tmp_path / "seq") == digest(tmp_path / "loc")


def test_sequential_engine_with_a_fitted_partitioner_and_label_column(tmp_path):
    src, exs = corpus(tmp_path)
    outs = {}
    for name, engine in (("seq", SequentialEngine()), ("loc", LocalEngine(3, slice_bytes=20_000))):
        m = tg.partition(src, DirichletPartitioner(6, "label", alpha=0.5, seed=1, min_partition_size=1),
                         tmp_path / name, engine=engine, progress=False)
        outs[name] = digest(tmp_path / name)
    assert outs["seq"] == outs["loc"]
    assert m["label_stats"]["column"] == "label" and m["num_examples"] == len(exs)


def map_all(src, keyfn, spill, budget, label_column=None):
    ctx = steps.MapContext(src, keyfn, spill, budget, label_column)
    totals = steps.MapTotals()
    for s in steps.work_slices(src):
        totals.add(steps.map_slice(ctx, s))
    return totals


def test_map_context_with_label_column_counts_labels_per_group(tmp_path):
    exs = [{"g": f"u{i % 4}", "l": ["x", "y", 3][i % 3]} for i in range(24)]
    src = as_source(exs)
    totals = map_all(src, lambda e: e["g"], str(tmp_path), 1 << 20, label_column="l")
    assert (totals.examples, totals.id_type, totals.dropped) == (24, "str", 0)
    job = steps.Job(src, None, str(tmp_path / "out"), shard_bytes=1 << 20, memory_budget=1 << 20, label_column="l")
    (tmp_path / "out").mkdir()
    [task] = steps.plan_write(job, totals.runs, totals.id_type, 1 << 20, str(tmp_path))
    assert task.label_stats
    rows, shards = steps.write_task(task)
    expect: dict = {}
    for e in exs:  # str labels as they are, others as JSON
        lab = e["l"] if isinstance(e["l"], str) else json.dumps(e["l"])
        expect.setdefault(e["g"], {}).setdefault(lab, 0)
        expect[e["g"]][lab] += 1
    lengths, joined = rows["group_id"]
    ids = [joined[a - n:a].decode() for n, a in zip(lengths, itertools.accumulate(lengths))]
    assert dict(zip(ids, map(dict, rows["label_counts"]))) == expect
    assert sum(sh["num_examples"] for sh in shards) == 24
    # the label column is required: the error names the example
    with pytest.raises(tg.PartitionError, match=r"example 2: key function raised KeyError: 'l'"):
        map_all(as_source([{"g": 1, "l": 1}, {"g": 1, "l": 2}, {"g": 2}]), lambda e: e["g"], str(tmp_path), 1 << 20,
                label_column="l")


def test_write_plan_from_data_alone(tmp_path):
    """Cut into 1 or 6 slices, spilled with a large or a tiny budget: the same
    write tasks, and tasks that write the same bytes."""
    p, _ = corpus(tmp_path, 2000)
    plans, shards = [], []
    for k, (slice_bytes, budget) in enumerate(((1 << 30, 1 << 30), (20_000, 30_000))):
        src = as_source(str(p), parallelism=3, slice_bytes=slice_bytes)
        spill = tmp_path / f"spill{k}"
        spill.mkdir()
        totals = map_all(src, tg.UrlDomainKey(), str(spill), budget)
        assert len(totals.runs) == (1 if k == 0 else len(totals.runs)) and (k == 0 or len(totals.runs) > 6)
        plans.append(steps.plan_tasks(totals.runs, 100_000, task_min_bytes=40_000))
        out = tmp_path / f"out{k}"
        out.mkdir()
        job = steps.Job(src, None, str(out), shard_bytes=100_000, memory_budget=budget)
        tasks = steps.plan_write(job, totals.runs, totals.id_type, budget, None, task_min_bytes=40_000)
        assert [(t.number, len(t.inputs)) for t in tasks][:1] == [(0, len(tasks[0].inputs))]
        shards.append([sh for t in tasks for sh in steps.write_task(t)[1]])
    assert plans[0] == plans[1] and len(plans[0]) > 2
    assert shards[0] == shards[1]


def test_map_context_pickles_without_its_cache(tmp_path):
    src = as_source([{"g": "a"}, {"g": "b"}])
    ctx = steps.MapContext(src, tg.partitioners.ColumnKey("g"), str(tmp_path), 1 << 20)
    steps.map_slice(ctx, next(iter(steps.work_slices(src))))
    assert len(ctx.seen) == 2
    again = pickle.loads(pickle.dumps(ctx))
    assert again.seen == {} and again.spill_dir == ctx.spill_dir and again.keyfn.column == "g"


def test_mixed_id_types_across_slices_name_both_places(tmp_path):
    src = as_source([{"g": "a"}] * 3 + [{"g": 5}] * 3)
    ctx = steps.MapContext(src, lambda e: e["g"], str(tmp_path), 1 << 20)
    totals = steps.MapTotals()
    chunks = list(src.chunks(max_examples=3))
    totals.add(steps.map_slice(ctx, chunks[0]))
    with pytest.raises(tg.PartitionError, match=r"example 3: group key is int but example 0 gave a str key"):
        totals.add(steps.map_slice(ctx, chunks[1]))


def test_engine_argument(tmp_path):
    assert resolve_engine("local", 3).num_workers == 3
    e = LocalEngine(2, slice_bytes=1000)
    assert resolve_engine(e) is e
    with pytest.raises(ValueError, match=r"num_workers=2 was given with engine=LocalEngine\(num_workers=2"):
        tg.partition([{"g": 1}], "g", tmp_path / "o", engine=e, num_workers=2, progress=False)
    with pytest.raises(ValueError, match=r"engine must be 'local', 'ray' or an engine object, got 'spark'"):
        tg.partition([{"g": 1}], "g", tmp_path / "o", engine="spark", progress=False)
    with pytest.raises(TypeError, match=r"engine must be 'local', 'ray' or an object with run\(job\).*not object"):
        tg.partition([{"g": 1}], "g", tmp_path / "o", engine=object(), progress=False)
    with pytest.raises(ValueError, match=r"num_workers must be >= 1, got 0"):
        LocalEngine(0)
    with pytest.raises(ValueError, match=r"slice_bytes must be >= 1, got 0"):
        LocalEngine(1, slice_bytes=0)


def test_sample_keys_are_format_sample_keys(tmp_path):
    """map_slice names each example's members ``format.sample_key(group hash,
    file number, byte offset)`` plus the member's suffix."""
    import tarfile

    from torch_grouper import format as fmt

    p = tmp_path / "a.jsonl"
    exs = [{"g": f"u{i % 3}", "i": i, "b": None} for i in range(9)]
    lines = [json.dumps(e).encode() + b"\n" for e in exs]
    p.write_bytes(b"".join(lines))
    offsets = [sum(map(len, lines[:i])) for i in range(len(lines))]
    src = as_source([str(p), str(p)])  # the second file has file number 1
    spill = tmp_path / "spill"
    spill.mkdir()
    totals = map_all(src, lambda e: e["g"], str(spill), 1 << 20)
    out = tmp_path / "out"
    out.mkdir()
    job = steps.Job(src, None, str(out), shard_bytes=1 << 20, memory_budget=1 << 20)
    names = set()
    for t in steps.plan_write(job, totals.runs, totals.id_type, 1 << 20, None):
        for sh in steps.write_task(t)[1]:
            with tarfile.open(out / sh["path"]) as tf:
                names |= set(tf.getnames())
    expect = {fmt.sample_key(fmt.group_hash(fmt.canonical_group_id(e["g"], "str")), fno, off) + ".json"
              for fno in (0, 1) for e, off in zip(exs, offsets)}
    assert names == expect and len(names) == 18
