"""Run under torchrun by tests/training/test_ddp.py; each rank leaves what it holds in OUT/rank<R>.pt / .json.

    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_probe.py train CONFIG OUT [RANK=KEY=VALUE ...]
    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_probe.py sync OUT

`train`: `sustain.training.engine.train` as `sustain train` runs it (the overrides prefixed
with a rank apply to that rank only, e.g. `1=guards.inject_nonfinite_loss=[1]`); the model
that DDP wrapped and the EMA are recorded as the engine builds them (observed, not changed),
their weights copied at the end of every epoch, and saved with the run's history and stop reason.

`sync`: Sustain's DDP wrapper and guarded optimizer step for a few steps, each rank on its own
batches; rank 0 then replays the same steps in one process, the ranks' batches accumulated
into one step, and saves both.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def train(config: str, out: Path, overrides: list[str]) -> None:
    from sustain.config import load_config
    from sustain.training import distributed, engine, loop, setup

    rank = int(os.environ["RANK"])
    held: dict = {}
    wrap, build_ema = distributed.Distributed.wrap, setup.build_ema

    def recording_wrap(self, model, device):
        held["model"] = model
        return wrap(self, model, device)

    def recording_ema(cfg, model):
        held["ema"] = build_ema(cfg, model)
        return held["ema"]

    def recording_epoch(*args, **kwargs):  # what each rank holds at the end of every epoch
        epochs.append({"model": copy.deepcopy(held["model"].state_dict()),
                       "ema": copy.deepcopy(held["ema"].module.state_dict()) if held.get("ema") else None})
        return close_epoch(*args, **kwargs)

    epochs: list[dict] = []
    close_epoch = loop.close_epoch
    distributed.Distributed.wrap = recording_wrap
    setup.build_ema = recording_ema
    loop.close_epoch = recording_epoch
    mine = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == str(rank)]
    result = engine.train(load_config(config, mine))
    torch.save({"epochs": epochs}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "ok": result.ok, "epochs_completed": result.epochs_completed, "stop_reason": result.stop_reason,
        "skipped": result.history["skipped"], "val_acc": result.history["val_acc"]}), encoding="utf-8")


def sync(out: Path, steps: int = 4, batch: int = 4, classes: int = 5) -> None:
    from sustain.config import ModelConfig
    from sustain.model import build_model
    from sustain.training.distributed import Distributed
    from sustain.training.guards import guarded_optimizer_step

    dist = Distributed.from_env()
    device = dist.init(SimpleNamespace(type="cpu"))
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(ModelConfig(name="test_vit", pretrained=False, input_size=32, drop_path_rate=0.0), classes)
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model.state_dict())
    ddp = dist.wrap(model, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(1)  # every rank draws all ranks' batches, then takes its own
    data = [(torch.randn(dist.world, batch, 3, 32, 32, generator=g), torch.randint(0, classes, (dist.world, batch),
                                                                                   generator=g))
            for _ in range(steps)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for images, labels in data:
        F.cross_entropy(ddp(images[dist.rank]), labels[dist.rank]).backward()
        assert guarded_optimizer_step(model, optimizer, scaler, 1.0)
        optimizer.zero_grad(set_to_none=True)
    torch.save({"model": model.state_dict()}, out / f"rank{dist.rank}.pt")
    if dist.is_main:  # one process, the same total batch: each rank's batch accumulated into one step
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
        for images, labels in data:
            for r in range(dist.world):
                (F.cross_entropy(reference(images[r]), labels[r]) / dist.world).backward()
            assert guarded_optimizer_step(reference, optimizer, scaler, 1.0)
            optimizer.zero_grad(set_to_none=True)
        torch.save({"model": reference.state_dict(), "initial": initial}, out / "single.pt")
    dist.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, *args = sys.argv[1:]
    if mode == "train":
        train(args[0], Path(args[1]), args[2:])
    else:
        sync(Path(args[0]))
