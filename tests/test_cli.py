"""The command line: ``torch_grouper.cli.main([...])`` and ``python -m torch_grouper``."""
import json
import os
import re
import subprocess
import sys

import pytest

import torch_grouper as tg
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
    (["partition", "a.jsonl", "out"], "one of the arguments --key --url-domain is required"),
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
    assert documented == commands == ["partition", "stats", "verify", "snapshots", "vacuum"]


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
