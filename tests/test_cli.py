"""The command line: ``torch_grouper.cli.main([...])`` and ``python -m torch_grouper``."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import torch_grouper as tg
from torch_grouper import partitioners as P
from helpers import digest
from torch_grouper import cli
from torch_grouper.cli import main
from torch_grouper.pipeline import DEFAULT_SHARD_BYTES
from torch_grouper.stats import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def jsonl(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"url": f"https://h{i % 7}.org/{i}", "t": "a b " * (i % 30)}) + "\n"
                           for i in range(300)))
    return src


def test_cli_partition_and_stats(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"url": f"https://h{i % 3}.org/{i}", "t": "a b"}) + "\n" for i in range(30)))
    assert main(["partition", str(src), str(tmp_path / "o"), "--url-domain", "url", "--workers", "1"]) == 0
    assert "30 examples, 3 groups" in capsys.readouterr().out
    assert main(["stats", str(tmp_path / "o"), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "groups:   3" in out and "examples: 30" in out and (tmp_path / "p.png").exists()
    assert tg.GroupedDataset(tmp_path / "o").manifest["partition"]["shard_size"] == DEFAULT_SHARD_BYTES


def test_partition_shard_bytes_gives_the_librarys_dataset(jsonl, tmp_path, capsys):
    assert main(["partition", str(jsonl), str(tmp_path / "cli"), "--key", "url", "--shard-bytes", "3000",
                 "--workers", "2"]) == 0
    m = tg.partition(str(jsonl), "url", tmp_path / "lib", shard_bytes=3000, num_workers=2, progress=False)
    assert f"300 examples, 300 groups, {len(m['shards'])} shards -> {tmp_path / 'cli'}" in capsys.readouterr().out
    assert len(m["shards"]) > 5 and digest(tmp_path / "cli") == digest(tmp_path / "lib")  # byte for byte
    # the old spelling still works, and says so
    assert main(["partition", str(jsonl), str(tmp_path / "old"), "--key", "url", "--shard-size", "3000",
                 "--workers", "2"]) == 0
    assert "--shard-size is deprecated; use --shard-bytes" in capsys.readouterr().err
    assert digest(tmp_path / "old") == digest(tmp_path / "lib")
    assert main(["partition", str(jsonl), str(tmp_path / "lib"), "--key", "url", "--shard-bytes", "9000",
                 "--overwrite"]) == 0
    assert tg.GroupedDataset(tmp_path / "lib").manifest["partition"]["shard_size"] == 9000


def test_stats_json_and_verify(jsonl, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["partition", str(jsonl), str(out), "--url-domain", "url", "--shard-bytes", "2000"]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary(tg.GroupedDataset(out))
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: OK\n"
    shard = os.path.join(tg.GroupedDataset(out).root, tg.GroupedDataset(out).manifest["shards"][0]["path"])
    with open(shard, "r+b") as f:
        f.seek(600)
        b = f.read(1)
        f.seek(600)
        f.write(bytes([b[0] ^ 1]))
    assert main(["verify", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "shard-00000-000.tar" in lines[0] and "sha256" in lines[0] and lines[-1] == f"{out}: 1 problem(s)"


def test_cli_snapshots_and_vacuum(tmp_path, capsys):
    out = tmp_path / "d"
    ids = [tg.partition([{"g": "a", "i": k}], "g", out, overwrite=True, progress=False, keep_snapshots=5)["snapshot"]
           for k in range(3)]
    assert main(["snapshots", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines] == ids and all(ln.endswith("available") for ln in lines)
    assert main(["vacuum", str(out), "--keep", "1", "--dry-run"]) == 0
    assert f"would remove snapshot {ids[0]}" in capsys.readouterr().out
    assert main(["vacuum", str(out), "--keep", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{out}: 2 snapshot(s) removed"
    assert main(["verify", str(out), "--snapshot", ids[2]]) == 0
    assert capsys.readouterr().out == f"{out}: OK\n"
    assert main(["snapshots", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[-1] for ln in lines] == ["removed", "removed", "available"]


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: cmd"),
    (["info", "x"], "invalid choice: 'info'"),
    (["partition", "a.jsonl", "out"], "one of the arguments --key --url-domain --partitioner is required"),
    (["partition", "a.jsonl", "out", "--key", "g", "--shard-bytes", "0"], "--shard-bytes: must be at least 1, got 0"),
    (["partition", "a.jsonl", "out", "--key", "g", "--shard-bytes", "1MB"], "--shard-bytes: not an integer: '1MB'"),
    (["partition", "a.jsonl", "out", "--key", "g", "--workers", "-2"], "--workers: must be at least 1, got -2"),
    (["partition", "a.jsonl", "out", "--key", "g", "--shard-size", "10", "--shard-bytes", "10"],
     "give --shard-bytes only"),
    (["vacuum", "d", "--keep", "0"], "--keep: must be at least 1, got 0"),
    (["stats"], "the following arguments are required: path"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: torch-grouper")
    assert not (tmp_path / "out").exists()


def test_the_docstring_lists_the_commands_there_are(capsys):
    documented = re.findall(r"^\s+torch-grouper (\w+)", cli.__doc__, re.M)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    commands = re.search(r"\{([\w,]+)\}", capsys.readouterr().out).group(1).split(",")
    assert documented == commands == ["partition", "stats", "show", "plot", "verify", "snapshots", "vacuum"]


def test_python_dash_m(jsonl, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "torch_grouper", "partition", str(jsonl), str(tmp_path / "o"),
                          "--key", "url", "--shard-bytes", "5000", "--workers", "1"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "300 examples, 300 groups" in run.stdout and tg.verify(tmp_path / "o") == []
    bad = subprocess.run([sys.executable, "-m", "torch_grouper", "info", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "invalid choice: 'info'" in bad.stderr


# ---------------------------------------------------------------- partitioners, labels, HF datasets
def labelled(n=400):
    return [{"i": i, "label": i % 10, "user": i % 23, "v": float((i * 37) % 101)} for i in range(n)]


@pytest.fixture
def labelled_jsonl(tmp_path):
    src = tmp_path / "l.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in labelled()))
    return src


def _dist_file(tmp_path):
    path = tmp_path / "dist.npy"
    np.save(path, np.ones((10, 4)))
    return str(path)


#: every built-in partitioner: its command-line arguments and the same object built in Python
PARTITIONERS = {
    "iid": (["--num-partitions", "4"], lambda t: P.IidPartitioner(4)),
    "size": (["--partition-sizes", "100,100,200"], lambda t: P.SizePartitioner([100, 100, 200])),
    "linear": (["--num-partitions", "4"], lambda t: P.LinearPartitioner(4)),
    "square": (["--num-partitions", "4"], lambda t: P.SquarePartitioner(4)),
    "exponential": (["--num-partitions", "3"], lambda t: P.ExponentialPartitioner(3)),
    "dirichlet": (["--num-partitions", "4", "--partition-by", "label", "--alpha", "0.5", "--seed", "7",
                   "--min-partition-size", "5", "--self-balancing"],
                  lambda t: P.DirichletPartitioner(4, "label", 0.5, min_partition_size=5, self_balancing=True,
                                                   seed=7)),
    "pathological": (["--num-partitions", "5", "--partition-by", "label", "--num-classes-per-partition", "2",
                      "--class-assignment-mode", "deterministic"],
                     lambda t: P.PathologicalPartitioner(5, "label", 2, class_assignment_mode="deterministic")),
    "shard": (["--num-partitions", "4", "--partition-by", "label", "--num-shards-per-partition", "3",
               "--label-shard-size", "20"],
              lambda t: P.ShardPartitioner(4, "label", num_shards_per_partition=3, shard_size=20)),
    "grouped-natural-id": (["--partition-by", "user", "--group-size", "3", "--param", "mode=allow-bigger",
                            "--sort-unique-ids"],
                           lambda t: P.GroupedNaturalIdPartitioner("user", 3, mode="allow-bigger",
                                                                   sort_unique_ids=True)),
    "inner-dirichlet": (["--partition-sizes", "100,100,150,50", "--partition-by", "label", "--alpha", "0.5",
                         "--seed", "3"],
                        lambda t: P.InnerDirichletPartitioner([100, 100, 150, 50], "label", 0.5, seed=3)),
    "continuous": (["--num-partitions", "4", "--partition-by", "v", "--strictness", "0.5", "--no-shuffle"],
                   lambda t: P.ContinuousPartitioner(4, "v", 0.5, shuffle=False)),
    "dirichlet-process": (["--num-partitions", "6", "--partition-by", "label", "--param", "alpha=0.3",
                           "--seed", "5"],
                          lambda t: P.DirichletProcessPartitioner(6, "label", alpha=0.3, seed=5)),
    "distribution": (["--distribution-array", "DIST", "--num-partitions", "20", "--num-unique-labels-per-partition",
                      "2", "--partition-by", "label", "--preassigned-num-samples-per-label", "3", "--seed", "none"],
                     lambda t: P.DistributionPartitioner(np.ones((10, 4)), 20, 2, "label", 3, seed=None)),
}


def test_every_builtin_partitioner_is_on_the_command_line():
    assert set(cli.partitioner_classes()) == set(PARTITIONERS)
    assert cli.partitioner_classes()["dirichlet"] is P.DirichletPartitioner


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partition_with_a_partitioner_gives_the_librarys_dataset(name, labelled_jsonl, tmp_path, capsys):
    argv, make = PARTITIONERS[name]
    argv = [_dist_file(tmp_path) if a == "DIST" else a for a in argv]
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "cli"), "--partitioner", name, *argv,
                 "--workers", "1", "--quiet"]) == 0
    m = tg.partition(str(labelled_jsonl), make(tmp_path), tmp_path / "lib", num_workers=1, progress=False)
    assert f"{m['num_examples']:,} examples, {m['num_groups']:,} groups" in capsys.readouterr().out
    cm = tg.GroupedDataset(tmp_path / "cli").manifest
    assert cm["partition"]["key"] == m["partition"]["key"]
    assert digest(tmp_path / "cli") == digest(tmp_path / "lib")  # byte for byte


def test_label_column_with_a_key(labelled_jsonl, tmp_path, capsys):
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "o"), "--key", "user", "--label-column", "label",
                 "--quiet"]) == 0
    m = tg.GroupedDataset(tmp_path / "o").manifest
    assert m["label_stats"]["column"] == "label" and m["label_stats"]["num_labels"] == 10 and m["num_groups"] == 23


@pytest.mark.parametrize("argv, message", [
    (["--partitioner", "dirichlet", "--num-partitions", "4", "--partition-by", "label"],
     "--partitioner dirichlet needs --alpha (it takes --num-partitions --partition-by --alpha"),
    (["--partitioner", "grouped-natural-id"], "--partitioner grouped-natural-id needs --partition-by --group-size"),
    (["--partitioner", "iid", "--num-partitions", "4", "--alpha", "0.5"],
     "--alpha does not apply to --partitioner iid (it takes --num-partitions)"),
    (["--key", "g", "--alpha", "0.5"], "--alpha needs --partitioner"),
    (["--key", "g", "--param", "alpha=1"], "--param needs --partitioner"),
    (["--partitioner", "dirichlet", "--num-partitions", "4", "--partition-by", "label", "--alpha", "-1"],
     "--partitioner dirichlet: alpha must be a positive number"),
    (["--partitioner", "dirichlet", "--num-partitions", "4", "--partition-by", "label", "--alpha", "x"],
     "argument --alpha: not a number or comma-separated numbers: 'x'"),
    (["--partitioner", "iid", "--num-partitions", "0"], "--partitioner iid: num_partitions must be a positive integer"),
    (["--partitioner", "iid", "--num-partitions", "four"], "argument --num-partitions: not an integer: 'four'"),
    (["--partitioner", "iid", "--param", "num_partitions"], "--param 'num_partitions': expected NAME=VALUE"),
    (["--partitioner", "iid", "--param", "bins=3"],
     "--param bins: --partitioner iid has no parameter 'bins' (its parameters: num_partitions)"),
    (["--partitioner", "iid", "--num-partitions", "3", "--param", "num_partitions=3"],
     "num_partitions is given twice (--num-partitions and --param num_partitions=...)"),
    (["--partitioner", "shard", "--num-partitions", "3", "--partition-by", "label", "--param", "shuffle=maybe"],
     "--param shuffle: not true or false: 'maybe'"),
    (["--partitioner", "pathological", "--num-partitions", "3", "--partition-by", "label",
      "--num-classes-per-partition", "2", "--class-assignment-mode", "odd"], "class_assignment_mode must be"),
    (["--partitioner", "distribution", "--distribution-array", "[1,", "--num-partitions", "2"],
     "argument --distribution-array: not a JSON array or a .json / .npy file"),
    (["--partitioner", "wishful"], "argument --partitioner: invalid choice: 'wishful'"),
    (["--key", "g", "--split", "train"], "--split needs --hf"),
])
def test_bad_partitioner_arguments_exit_2_naming_them(argv, message, tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text('{"g": 1, "label": 0}\n')
    with pytest.raises(SystemExit) as e:
        main(["partition", str(src), str(tmp_path / "out"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: torch-grouper partition")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def hf_saved(tmp_path):
    datasets = pytest.importorskip("datasets")
    exs = labelled(300)
    for e in exs:
        e["img"] = bytes([e["i"] % 256]) * 30
    ds = datasets.Dataset.from_list(exs)
    ds.save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(50))}).save_to_disk(str(tmp_path / "hfdict"))
    return ds


def test_partition_a_saved_hf_dataset(hf_saved, tmp_path, capsys):
    args = ["--partitioner", "dirichlet", "--num-partitions", "5", "--partition-by", "label", "--alpha", "0.5",
            "--seed", "42", "--workers", "2"]
    assert main(["partition", "--hf", str(tmp_path / "hf"), str(tmp_path / "cli"), *args]) == 0
    import datasets

    tg.partition(datasets.load_from_disk(str(tmp_path / "hf")), P.DirichletPartitioner(5, "label", 0.5, seed=42),
                 tmp_path / "lib", num_workers=2, progress=False)
    assert digest(tmp_path / "cli") == digest(tmp_path / "lib")
    got = sorted(ex["i"] for g in tg.GroupedDataset(tmp_path / "cli") for ex in g)
    assert got == list(range(300))
    # a DatasetDict: every split (OUTPUT/SPLIT) or the one named
    capsys.readouterr()
    assert main(["partition", "--hf", str(tmp_path / "hfdict"), str(tmp_path / "all"), "--key", "user",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"300 examples, 23 groups, 1 shards -> {tmp_path / 'all'}/train" in out
    assert f"50 examples, 23 groups, 1 shards -> {tmp_path / 'all'}/test" in out
    assert main(["partition", "--hf", str(tmp_path / "hfdict"), str(tmp_path / "test"), "--split", "test",
                 "--key", "user", "--shuffle-seed", "1", "--quiet"]) == 0
    assert tg.GroupedDataset(tmp_path / "test").num_examples == 50


def test_partition_a_local_dataset_folder_offline(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(labelled(120)).to_parquet(str(folder / "train-00000.parquet"))
    assert main(["partition", "--hf", str(tmp_path / "repo"), str(tmp_path / "o"), "--split", "train",
                 "--key", "label", "--quiet"]) == 0
    assert "120 examples, 10 groups" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--hf", "{tmp}/nothing", "{tmp}/o", "--key", "g"], "--hf {tmp}/nothing: no such file or directory"),
    (["--hf", "{tmp}/hfdict", "{tmp}/o", "--key", "g", "--split", "validation"],
     "--split 'validation': {tmp}/hfdict has splits ['train', 'test']"),
    (["--hf", "{tmp}/hf", "{tmp}/o", "--key", "g", "--split", "train"],
     "--split 'train': {tmp}/hf is a single dataset (no splits)"),
    (["--hf", "{tmp}/hf", "extra.jsonl", "{tmp}/o", "--key", "g"], "with --hf give only OUTPUT, got 2 paths"),
    (["{tmp}/o", "--key", "g"], "give SOURCE... OUTPUT (or --hf PATH OUTPUT)"),
])
def test_bad_hf_arguments_exit_2(argv, message, hf_saved, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["partition", *[a.format(tmp=tmp_path) for a in argv]])
    assert e.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_failures_on_input_exit_1_with_a_message(labelled_jsonl, tmp_path, capsys):
    # a column the data lacks: the library's error, named, status 1, nothing written
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "o"), "--partitioner", "dirichlet",
                 "--num-partitions", "3", "--partition-by", "colour", "--alpha", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torch-grouper partition: error:") and "'colour'" in err
    assert not (tmp_path / "o").exists()
    assert main(["stats", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("torch-grouper stats: error:")
    tg.partition(str(labelled_jsonl), "user", tmp_path / "d", progress=False)
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "d"), "--key", "user", "--quiet"]) == 1
    assert f"{tmp_path / 'd'} already holds a complete torch_grouper dataset" in capsys.readouterr().err


# ---------------------------------------------------------------- stats, show, plot
def test_stats_label_section(labelled_jsonl, tmp_path, capsys):
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "o"), "--partitioner", "dirichlet",
                 "--num-partitions", "8", "--partition-by", "label", "--alpha", "0.3", "--min-partition-size", "2",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    ds = tg.GroupedDataset(tmp_path / "o")
    ls = ds.manifest["label_stats"]
    assert "labels:   10 in column 'label'" in lines
    assert not any(ln.startswith("words") for ln in lines)  # numbers only: no all-zero words rows
    hl = next(ln for ln in lines if ln.strip().startswith("hellinger"))
    assert hl.split()[1:] == ["mean", f"{ls['hellinger']['mean']:.3f}", "median", f"{ls['hellinger']['median']:.3f}",
                              "max", f"{ls['hellinger']['max']:.3f}"]
    jl = next(ln for ln in lines if ln.strip().startswith("jensen-shannon"))
    assert jl.split()[2] == f"{ls['jensen_shannon']['mean']:.3f}"
    lpg = ls["labels_per_group"]
    assert f"labels per group    mean {lpg['mean']:.2f}  min {lpg['min']}  max {lpg['max']}" in lines
    # the most skewed groups: by Hellinger distance, from the index
    rows = sorted(ds.index.to_pylist(), key=lambda r: -r["hellinger"])[:5]
    first = lines.index("most skewed groups (hellinger, jensen-shannon, examples, labels)")
    listed = [ln.split() for ln in lines[first + 1: first + 6]]
    assert [int(x[0]) for x in listed] == [r["group_id"] for r in rows]
    assert [x[1] for x in listed] == [f"{r['hellinger']:.3f}" for r in rows]
    assert [int(x[3].replace(",", "")) for x in listed] == [r["num_examples"] for r in rows]
    assert main(["stats", str(tmp_path / "o"), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["labels"]["num_labels"] == 10 and [g["group_id"] for g in js["labels"]["most_skewed"]] == \
        [r["group_id"] for r in rows]


def test_stats_of_text_keeps_words_and_has_no_label_section(jsonl, tmp_path, capsys):
    assert main(["partition", str(jsonl), str(tmp_path / "o"), "--url-domain", "url", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "words:" in out and any(ln.startswith("words ") for ln in out.splitlines()) and "labels" not in out


def test_show_prints_a_groups_first_examples(tmp_path, capsys):
    exs = [{"user": "ann" if i % 3 else "bob", "i": i, "text": f"turn {i} " + "x" * 300, "blob": bytes(range(40))}
           for i in range(30)]
    tg.partition(exs, "user", tmp_path / "o", progress=False)
    assert main(["show", str(tmp_path / "o"), "bob", "--n", "2", "--width", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "group bob: 10 examples, " + f"{tg.GroupedDataset(tmp_path / 'o')['bob'].num_bytes:,}" + \
        " bytes (showing 2)"
    assert lines[1].startswith("[0]") and sum(ln.startswith("[") for ln in lines) == 2
    i_lines = [ln.split()[-1] for ln in lines if ln.split()[-2:-1] == ["i"] or ln.split()[1:2] == ["i"]]
    assert i_lines == ["0", "3"]  # the group's first two examples, in input order
    text = [ln for ln in lines if " text " in ln]
    assert text and all(len(ln.split("text", 1)[1].strip()) <= 40 for ln in text)
    assert all(ln.rstrip().endswith("(307 chars)") for ln in text)
    blob = [ln for ln in lines if " blob " in ln]
    assert blob[0].split("blob", 1)[1].strip() == "<40 bytes> 000102030405060708090a0b0c..."  # cut at 40
    assert main(["show", str(tmp_path / "o"), "bob", "--n", "1"]) == 0
    blob = [ln for ln in capsys.readouterr().out.splitlines() if " blob " in ln]
    assert blob[0].split("blob", 1)[1].strip() == "<40 bytes> " + bytes(range(16)).hex() + "..."
    # missing group, wrong id type: status 1 and a message naming it
    assert main(["show", str(tmp_path / "o"), "carl"]) == 1
    assert f"no group 'carl' in {tmp_path / 'o'} (2 groups: ann, bob)" in capsys.readouterr().err
    tg.partition([{"g": g, "x": 1} for g in (3, 10, 2)], "g", tmp_path / "n", progress=False)
    assert main(["show", str(tmp_path / "n"), "10"]) == 0
    assert capsys.readouterr().out.startswith("group 10: 1 examples")
    assert main(["show", str(tmp_path / "n"), "ten"]) == 1
    assert "group id 'ten': the group ids of" in capsys.readouterr().err


def test_plot_writes_the_pngs(labelled_jsonl, tmp_path, capsys):
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "a"), "--partitioner", "iid", "--num-partitions",
                 "4", "--label-column", "label", "--quiet"]) == 0
    assert main(["partition", str(labelled_jsonl), str(tmp_path / "b"), "--partitioner", "pathological",
                 "--num-partitions", "4", "--partition-by", "label", "--num-classes-per-partition", "2",
                 "--quiet"]) == 0
    capsys.readouterr()
    s, la, c = (str(tmp_path / f) for f in ("s.png", "l.png", "c.png"))
    assert main(["plot", str(tmp_path / "a"), "--sizes", s, "--labels", la, "--percent"]) == 0
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--compare", c, "--titles", "iid", "2 labels"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"sizes: {s}", f"labels: {la}", f"compare: {c}"]
    for f in (s, la, c):
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    tg.partition(str(labelled_jsonl), "user", tmp_path / "nolabels", progress=False)
    assert main(["plot", str(tmp_path / "nolabels"), "--labels", la]) == 1
    assert "the dataset has no label statistics" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["plot", "d"], "give --sizes PNG, --labels PNG or --compare PNG"),
    (["plot", "d", "e", "--sizes", "s.png"], "--sizes and --labels plot one dataset, got 2 paths (use --compare)"),
    (["plot", "d", "e", "--compare", "c.png", "--titles", "one"], "--titles needs --compare and one title per PATH"),
    (["show", "d"], "the following arguments are required: group_id"),
    (["show", "d", "g", "--n", "0"], "--n: must be at least 1, got 0"),
])
def test_bad_show_and_plot_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["partition", "stats", "show", "plot", "verify", "snapshots", "vacuum"])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: torch-grouper {cmd}")
    if cmd == "partition":  # every partitioner listed with its parameters
        for name, cls in cli.partitioner_classes().items():
            assert re.search(rf"^  {re.escape(name)} +{cls.__name__}: ", out, re.M)
