"""ServerApp: FedAvg over the groups of FedShakespeare, one group per message."""
from __future__ import annotations

import json
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from torch_grouper.flower import GroupFedAvg

from . import task


class ReportingFedAvg(GroupFedAvg):
    """GroupFedAvg that prints each round's loss and keeps what each client reported consuming."""

    def __init__(self, *args, report_path: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.report_path = report_path
        self.losses: dict = {}
        self._t0 = time.perf_counter()

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        self._t0 = time.perf_counter()
        return super().configure_evaluate(server_round, arrays, config, grid)

    def _record(self, kind, server_round, replies):
        replies = list(replies)
        rows = []
        for msg in replies:
            if msg.has_error():
                continue
            c = msg.content["consumed"]
            rows.append({"kind": kind, "round": server_round, "node": msg.metadata.src_node_id,
                         "group_id": c["group-id"], "examples": c["examples"], "digest": c["digest"]})
        if self.report_path:
            with open(self.report_path, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        return replies, len(rows)

    def aggregate_train(self, server_round, replies):
        replies, n = self._record("train", server_round, replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self.losses[("train", server_round)] = metrics["train-loss"]
            print(f"round {server_round}: train loss {metrics['train-loss']:.4f} ({n} groups, "
                  f"{time.perf_counter() - self._t0:.1f} s)", flush=True)
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        replies, n = self._record("evaluate", server_round, replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.losses[("evaluate", server_round)] = metrics["eval-loss"]
            print(f"round {server_round}: eval loss {metrics['eval-loss']:.4f} ({n} groups, "
                  f"{time.perf_counter() - self._t0:.1f} s)", flush=True)
        return metrics


def make_server_app(**overrides) -> ServerApp:
    """A ServerApp; settings: ``task.DEFAULTS``, then the run config, then ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = {**task.DEFAULTS, **dict(context.run_config), **overrides}
        if not cfg["dataset-path"]:
            raise ValueError("set dataset-path to a partitioned FedShakespeare (python examples/fedshakespeare.py "
                             "--out DIR), e.g. flwr run . --run-config \"dataset-path='/abs/DIR'\"")
        strategy = ReportingFedAvg(cfg["dataset-path"], int(cfg["cohort-size"]), seed=int(cfg["seed"]),
                                   evaluate_cohort_size=int(cfg["eval-cohort-size"]),
                                   report_path=cfg["report-path"])
        torch.manual_seed(int(cfg["seed"]))
        model = task.CharGRU()
        print(f"FedAvg on {len(strategy.grouped)} groups of {strategy.grouped.url}: {cfg['cohort-size']} groups "
              f"per round, {cfg['num-server-rounds']} rounds", flush=True)
        hyper = {k: cfg[k] for k in ("local-steps", "batch-size", "seq-len", "lr")}
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                       num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord(hyper),
                       evaluate_config=ConfigRecord({"seq-len": cfg["seq-len"]}))

    return app


app = make_server_app()
