"""ClientApp: train or evaluate on the one group named by each message."""
from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from torch_grouper.flower import load_client_data

from . import task


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = msg.content["config"]
        group = load_client_data(msg)  # the group in cfg["group-id"], from the dataset in cfg["dataset"]
        tokens, n, digest = task.consume(group)
        model = task.CharGRU()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = task.train(model, tokens, steps=int(cfg["local-steps"]), batch_size=int(cfg["batch-size"]),
                          seq_len=int(cfg["seq-len"]), lr=float(cfg["lr"]),
                          seed=task.group_seed(int(cfg["server-round"]), group.id))
        return Message(content=RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": n}),
            "consumed": ConfigRecord({"group-id": group.id, "examples": n, "digest": digest}),
        }), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = msg.content["config"]
        group = load_client_data(msg)
        tokens, n, digest = task.consume(group)
        model = task.CharGRU()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss = task.evaluate(model, tokens, seq_len=int(cfg["seq-len"]))
        return Message(content=RecordDict({
            "metrics": MetricRecord({"eval-loss": loss, "num-examples": n}),
            "consumed": ConfigRecord({"group-id": group.id, "examples": n, "digest": digest}),
        }), reply_to=msg)

    return app


app = make_client_app()
