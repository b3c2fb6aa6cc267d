"""The PyTorch FL reference (examples/federated) and the findings script, run tiny on real FedShakespeare data."""
import gzip
import json
import math
import os
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from federated import algorithms as A  # noqa: E402
from federated.data import ClientBlocks, RoundGroups, cohort_ids, iterate_rounds, load_groups  # noqa: E402
from federated.evaluate import personalization_losses, quartiles  # noqa: E402
from federated.model import IGNORE_INDEX, SHAKESPEARE_ALPHABET, make_model, token_loss  # noqa: E402
from federated.run import FEDSHAKESPEARE, make_splits, partition_fedshakespeare, speaker_key  # noqa: E402

LIMIT = 800  # speech turns of FedShakespeare used here


@pytest.fixture(scope="module")
def shk(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fl") / "shk")
    partition_fedshakespeare(path, limit=LIMIT)
    with gzip.open(FEDSHAKESPEARE, "rt", encoding="utf-8") as f:
        exs = [json.loads(line) for _, line in zip(range(LIMIT), f)]
    by_group = defaultdict(list)
    for e in exs:
        by_group[speaker_key(e)].append(e)
    return path, by_group


def expected_stream(examples):
    """Token ids of a group, computed here from the alphabet (not through PackTokens)."""
    out = []
    for e in examples:
        out += [SHAKESPEARE_ALPHABET.index(c) + 2 if c in SHAKESPEARE_ALPHABET else 1 for c in e["text"]] + [1]
    return out


def test_splits_are_disjoint_and_validation_comes_from_training(shk):
    import torch_grouper as tg

    path, by_group = shk
    s = make_splits(path, seed=0)
    fit, val = set(s.fit.group_ids()), set(s.validation.group_ids())
    held = set(tg.GroupedDataset(path).split_groups({"train": 0.9, "heldout": 0.1}, seed=0)["heldout"].group_ids())
    assert fit and val and held
    assert not fit & val and not fit & held and not val & held
    assert fit | val | held == set(by_group)
    assert s.personalize.group_ids() == s.test.group_ids()
    assert set(s.personalize.group_ids()) == {g for g in held if len(by_group[g]) >= 2}
    g = s.personalize.group_ids()[0]
    parts = [ex["text"] for ex in s.personalize[g]] + [ex["text"] for ex in s.test[g]]
    assert sorted(parts) == sorted(e["text"] for e in by_group[g])


def test_cohort_ids_are_drawn_without_repeats_within_a_pass(shk):
    path, _ = shk
    view = make_splits(path, seed=0).fit
    n = len(view)
    rounds = cohort_ids(view, 4, n // 4, seed=3)
    flat = [g for r in rounds for g in r]
    assert all(len(r) == 4 for r in rounds)
    assert len(set(flat)) == len(flat) == 4 * (n // 4) and set(flat) <= set(view.group_ids())
    assert cohort_ids(view, 4, 3, seed=3) == rounds[:3]
    assert [[g.id for g in c] for c in view.cohorts(4, seed=3, rounds=3, num_threads=1)] == rounds[:3]
    assert cohort_ids(view, 4, 3, seed=4) != rounds[:3]


def test_round_loader_reads_each_id_once_with_its_data(shk):
    path, by_group = shk
    view = make_splits(path, seed=0).fit
    rounds = cohort_ids(view, 5, 3, seed=0)
    fn = ClientBlocks(block_size=16, max_blocks=3)
    items = list(DataLoader(RoundGroups(view.map_groups(fn), rounds), batch_size=None, num_workers=2))
    assert Counter((r, gid) for r, gid, _ in items) == Counter((r, g) for r, ids in enumerate(rounds) for g in ids)
    seen = 0
    for r, clients, wait in iterate_rounds(view, rounds, fn, num_workers=2):
        assert [c[0] for c in clients] == rounds[r] and wait >= 0
        for gid, inputs, targets in clients:
            stream = expected_stream(by_group[gid])
            n = min(3 * 16, len(stream) - 1)
            assert inputs.dtype == torch.int64 and inputs.shape[1] == 16 and len(inputs) == min(3, math.ceil((len(stream) - 1) / 16))
            got_t = targets.reshape(-1)
            assert got_t[got_t != IGNORE_INDEX].tolist() == stream[1:n + 1]
            assert inputs.reshape(-1)[:n].tolist() == stream[:n]
            seen += 1
    assert seen == 15


def test_schedules():
    c = A.lr_schedule("constant", 0.1, 10)
    assert [c(r) for r in range(10)] == [0.1] * 10
    w = A.lr_schedule("warmup_cosine", 1.0, 20, warmup_frac=0.1)  # 2 warmup rounds
    assert w(0) == pytest.approx(0.5) and w(1) == pytest.approx(1.0) and w(2) == pytest.approx(1.0)
    assert w(19) == pytest.approx(0.0, abs=1e-12) and w(11) < w(10) < w(2)
    e = A.lr_schedule("exponential", 1.0, 11, final_frac=0.1)
    assert e(0) == 1.0 and e(10) == pytest.approx(0.1) and e(5) == pytest.approx(0.1 ** 0.5)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        A.lr_schedule("cosine", 1.0, 10)
    with pytest.raises(ValueError, match="unknown server optimizer 'adagrad'"):
        A.server_optimizer("adagrad", make_model(0, hidden=4).parameters(), 0.1)


def _clients(shk, n=2, block=16, blocks=3):
    path, _ = shk
    view = make_splits(path, seed=0).fit
    ids = view.group_ids()[:n]
    return [v for v in load_groups(view, ids, ClientBlocks(block, blocks), num_workers=0).values()]


def test_fedsgd_round_is_one_step_on_the_union_of_the_clients(shk):
    clients = _clients(shk)
    model, local = make_model(0, hidden=8), make_model(1, hidden=8)
    ref = make_model(0, hidden=8)
    inputs = torch.cat([c[1] for c in clients])
    targets = torch.cat([c[2] for c in clients])
    loss, n = token_loss(ref, inputs, targets)
    (loss / n).backward()  # the gradient of the mean loss over all clients' tokens
    opt = A.server_optimizer("sgdm", model.parameters(), 0.5)  # first momentum step = lr * gradient
    m = A.run_round("fedsgd", model, local, opt, clients, lr=0.5)
    assert m["clients"] == 2 and m["tokens"] == n
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q.detach() - 0.5 * q.grad, rtol=1e-5, atol=1e-6)


def test_fedavg_with_one_local_batch_is_fedsgd_scaled_by_the_client_lr(shk):
    clients = _clients(shk, n=1)
    a, b, local = make_model(0, hidden=8), make_model(0, hidden=8), make_model(2, hidden=8)
    A.run_round("fedavg", a, local, torch.optim.SGD(a.parameters(), lr=1.0), clients, lr=1.0, client_lr=0.3,
                batch_size=100)
    A.run_round("fedsgd", b, local, torch.optim.SGD(b.parameters(), lr=0.3), clients, lr=0.3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown algorithm 'fedprox'"):
        A.run_round("fedprox", a, local, torch.optim.SGD(a.parameters(), lr=1.0), clients, lr=1.0)


def test_personalization_and_quartiles(shk):
    path, _ = shk
    s = make_splits(path, seed=0)
    fn = ClientBlocks(16, 4)
    ids = s.personalize.group_ids()
    p, t = load_groups(s.personalize, ids, fn, num_workers=0), load_groups(s.test, ids, fn, num_workers=0)
    groups = {g: ((p[g][1], p[g][2]), (t[g][1], t[g][2])) for g in ids}
    model, local = make_model(0, hidden=8), make_model(0, hidden=8)
    zero = personalization_losses(model, local, groups, steps=0, lr=1.0, batch_size=4)
    assert zero["before"] == zero["after"] and zero["ids"] == ids
    three = personalization_losses(model, local, groups, steps=3, lr=1.0, batch_size=4)
    assert three["before"] == zero["before"]
    assert np.mean(three["after"]) < np.mean(three["before"])  # an untrained model learns the alphabet's frequencies
    assert quartiles([5, 1, 4, 2, 3]) == {"p25": 2.0, "median": 3.0, "p75": 4.0, "groups": 5}


def test_run_cli_writes_metrics_and_plots(shk, tmp_path):
    from federated.run import main

    path, _ = shk
    out = tmp_path / "o"
    assert main(["--data", path, "--out", str(out), "--rounds", "2", "--cohort", "4", "--hidden", "8",
                 "--max-blocks", "2", "--block-size", "16", "--eval-every", "1", "--workers", "1"]) == 0
    recs = [json.loads(line) for line in open(out / "fedavg-clr0.5-slr0.01-constant.jsonl")]
    assert [r["round"] for r in recs] == [0, 1] and all(r["clients"] == 4 for r in recs)
    assert all(0 <= r["data_wait_frac"] <= 1 and "val_loss" in r for r in recs)
    for png in ("fedavg-clr0.5-slr0.01-constant_loss.png", "fedavg-clr0.5-slr0.01-constant_personalization.png"):
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_fl_findings_runs_tiny(shk, tmp_path, capsys):
    import fl_findings

    path, _ = shk
    s = fl_findings.main(["--data", path, "--rounds", "2", "--cohort", "4", "--hidden", "8", "--max-blocks", "2",
                          "--block-size", "16", "--eval-every", "0", "--workers", "1",
                          "--fedavg-client-lrs", "0.3", "--fedavg-server-lrs", "0.01,0.03",
                          "--fedsgd-server-lrs", "0.01,0.03", "--personalize-lrs", "0.1,1.0",
                          "--plots", str(tmp_path / "plots"), "--metrics", str(tmp_path / "m")])
    assert [(r["algorithm"], r["schedule"]) for r in s["runs"]] == [
        (a, k) for a in ("fedavg", "fedsgd") for k in ("constant", "warmup_cosine", "exponential")]
    for alg in ("fedavg", "fedsgd"):  # the chosen config is the grid's lowest validation loss
        assert s["chosen"][alg]["server_lr"] == min(s["tuning"][alg], key=lambda x: x["val_loss"])["server_lr"]
    for r in s["runs"]:
        assert r["before"]["groups"] == r["after"]["groups"] > 0 and 0 <= r["data_wait_frac"] <= 1
        assert r["before"]["p25"] <= r["before"]["median"] <= r["before"]["p75"]
    lines = open(tmp_path / "m" / "rounds.jsonl").read().splitlines()
    assert len(lines) == (2 + 2 + 2 + 2) * 2  # 4 tuning runs and 2 more schedules each, 2 rounds a run
    out = capsys.readouterr().out
    assert "finding (1)" in out and "finding (2)" in out and "| fedsgd | exponential |" in out
    for png in ("fl_loss_curves.png", "fl_personalization.png"):
        assert open(tmp_path / "plots" / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
