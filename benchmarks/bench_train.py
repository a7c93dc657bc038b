"""End-to-end training throughput against the compute-only ceiling, and an RSS leak check.

    python benchmarks/bench_train.py                      # demo model + eva02_tiny at 224 px
    python benchmarks/bench_train.py --only demo --epochs 8
    python benchmarks/bench_train.py --lake data/demo     # reuse an existing demo lake

For each case, in one process:
- **end to end**: `sustain.training.engine.train` on the demo lake (decoding, augmentation,
  DataLoader, guards, bars, validation, checkpoints: everything a user runs); images/s is
  the training images of an epoch over the whole epoch's wall time (`epoch_seconds`, with
  its validation pass), median over epochs 2..N (epoch 1 warms up);
- **train phase**: the engine's own `images_per_second`, the training loop alone
  (validation left out), median over epochs 2..N;
- **ceiling**: the same model, optimizer, loss, batch size, precision (the one
  the run trained in: `train.amp: auto` may have chosen bf16) and CPU thread
  count, stepping on one batch of tensors already in memory (forward, loss,
  backward, clip, optimizer step). The thread count is the
  one the engine's measured CPU plan (`device.plan_cpu`) ran the epochs with,
  read off torch while the epochs run, so the ceiling is measured after the
  end-to-end run, twice, the faster counts;
- **ratio** = train phase / ceiling (goal ≥ 0.9: the data path and the loop
  overhead together cost at most 10%); `end_to_end_ratio` = end to end / ceiling
  also charges the validation pass (no goal: its share depends on the split);
- **ceiling beside a loader** (where the plan ran loader workers): the same
  ceiling while another process does one worker's share of the loading on the
  other cores: it decodes a batch of the run's training images (its manifest)
  and puts it through the run's train transform, then idles for the rest of a
  training batch's time
  (the train phase's), as a worker that keeps up does. `ratio_beside_loader` =
  train phase / that ceiling: what the loop itself costs, once the compute's
  slowdown from sharing the machine with the loading (caches, memory
  bandwidth) is charged to the loading.
The demo case also records the process RSS at the end of every epoch: after
the first epochs it must stay flat (no leak).

Writes benchmarks/results/bench_train.json and prints a table.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import ensure_lake  # noqa: E402
from sustain.artifacts import RunRecord  # noqa: E402
from sustain.config import Config, load_config  # noqa: E402

RESULTS = results_file("bench_train")

CASES: dict[str, list[str]] = {
    # configs/demo.yaml as `make train` runs it.
    "demo": [],
    # EVA02's smallest sibling at its native 224 px; a capped epoch keeps the run short on a CPU.
    "eva02_tiny_224": ["model.name=eva02_tiny_patch14_224", "model.input_size=224", "model.drop_path_rate=0.1",
                       "train.batch_size=16", "train.max_steps_per_epoch=6"],
}


class EpochProbe(logging.Handler):
    """Samples the process RSS and torch's intra-op thread count whenever the engine logs its
    `Epoch E/N: ...` line: the threads are those the engine's CPU plan set for the epochs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        import psutil

        self.process = psutil.Process()
        self.rss_mb: list[float] = []
        self.threads: list[int] = []
        self.cpu_plan: str | None = None  # the plan's line: the measured step and batch load it chose from

    def emit(self, record: logging.LogRecord) -> None:
        if "CPU plan:" in record.getMessage():
            self.cpu_plan = record.getMessage().split("CPU plan: ", 1)[1]
        if record.getMessage().startswith("Epoch ") and "Train Acc" in record.getMessage():
            self.rss_mb.append(self.process.memory_info().rss / 2**20)
            self.threads.append(torch.get_num_threads())


def compute_ceiling(cfg: Config, steps: int, bf16: bool, warmup: int = 3) -> float:
    """Images/s of the bare training step on one in-memory batch, with the engine's own building blocks,
    in the precision the engine's run trained in (`bf16`: what `train.amp: auto` and its probe chose)."""
    from sustain.device import plan_precision
    from sustain.model import build_model
    from sustain.taxonomy import build_taxonomy
    from sustain.training.guards import guarded_optimizer_step, make_scaler
    from sustain.training.losses import PartialLabelLoss
    from sustain.training.optim import build_optimizer

    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    model = build_model(cfg.model, taxonomy.num_classes, "cpu")
    size = cfg.model.input_size or model.pretrained_cfg["input_size"][-1]
    optimizer = build_optimizer(cfg.train, model)
    loss_fn = PartialLabelLoss(cfg.train.label_smoothing)
    precision = plan_precision("cpu", "on" if bf16 else "off", False)
    scaler = make_scaler("cpu", precision, precision.autocast)
    batch = cfg.train.batch_size
    images = torch.randn(batch, 3, size, size)
    targets = torch.nn.functional.one_hot(torch.arange(batch) % taxonomy.num_classes, taxonomy.num_classes).float()
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.autocast):
            loss = loss_fn(model(images), targets)
        bool(torch.isfinite(loss))  # the engine's loss guard syncs here too
        scaler.scale(loss / cfg.train.accum_steps).backward()
        guarded_optimizer_step(model, optimizer, scaler, cfg.train.grad_clip)

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def _loader_share(stop: Any, data_config: dict[str, Any], data_cfg: Any, files: list[str], batch: int,
                  period: float) -> None:
    """One loader worker's duty, in its own process: a batch of `files` decoded as the loader decodes them and
    put through the run's train transform, then idle until `period` (a training batch's time) has passed;
    until `stop` is set."""
    from sustain.data.scan import load_rgb
    from sustain.transforms import build_train_transform

    torch.set_num_threads(1)
    transform = build_train_transform(data_config, data_cfg)
    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        for _ in range(batch):
            transform(load_rgb(files[i % len(files)]))
            i += 1
        time.sleep(max(0.0, period - (time.perf_counter() - start)))


def ceiling_beside_loader(cfg: Config, steps: int, bf16: bool, run_dir: Path, period: float) -> float:
    """`compute_ceiling` while another process loads one worker's share of batches (`_loader_share`): the
    run's training images (its manifest.csv) through the transform of its recorded data config (run.json)."""
    import multiprocessing

    from sustain.data.manifest import read_manifest
    from sustain.taxonomy import build_taxonomy

    rows = read_manifest(run_dir / "manifest.csv", build_taxonomy(**cfg.taxonomy.model_dump()))
    files = [r.path for r in rows if r.split == "train"]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    loader = ctx.Process(target=_loader_share, args=(stop, RunRecord.read(run_dir).normalisation, cfg.data, files,
                                                     cfg.train.batch_size, period), daemon=True)
    loader.start()
    try:
        time.sleep(3.0)  # its imports and first batches, before the clock starts
        ceiling = compute_ceiling(cfg, steps, bf16)
        if not loader.is_alive():
            raise RuntimeError(f"the loader process died (exit code {loader.exitcode}): no ceiling beside it")
        return ceiling
    finally:
        stop.set()
        loader.join(timeout=30)


def run_case(name: str, overrides: list[str], lake: Path, epochs: int, workers: str) -> dict[str, Any]:
    from sustain.training.engine import train

    with tempfile.TemporaryDirectory(prefix=f"bench_train_{name}_") as out:
        cfg = load_config(ROOT / "configs" / "demo.yaml", [
            f"data.root={lake}", f"output_dir={out}", f"train.epochs={epochs}", "train.early_stopping_patience=0",
            f"data.num_workers={workers}", "device=cpu", *overrides])
        probe = EpochProbe()
        logging.getLogger("sustain.training.engine").addHandler(probe)
        t = time.perf_counter()
        try:
            result = train(cfg)
        finally:
            logging.getLogger("sustain.training.engine").removeHandler(probe)
        wall = time.perf_counter() - t
        record = RunRecord.read(out)
        n_workers = record.device["num_workers"]
        train_images = record.data_summary["splits"]["train"]

        if len(set(probe.threads)) != 1:
            raise RuntimeError(f"the engine's thread count changed between epochs: {probe.threads}")
        threads = probe.threads[0]  # what the engine's CPU plan chose for this run
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        steps = min(cfg.train.max_steps_per_epoch or 30, 30)
        bf16 = record.device["precision"].startswith("bf16")
        ceilings = [compute_ceiling(cfg, steps, bf16) for _ in range(2)]
        batch_seconds = cfg.train.batch_size / statistics.median(result.history["images_per_second"][1:] or
                                                                 result.history["images_per_second"])
        beside = ([ceiling_beside_loader(cfg, steps, bf16, Path(out), batch_seconds) for _ in range(2)]
                  if n_workers else [])
        torch.set_num_threads(saved_threads)

    per_epoch = result.history["images_per_second"]
    steps_cap = cfg.train.max_steps_per_epoch
    per_epoch_images = min(train_images, steps_cap * cfg.train.batch_size) if steps_cap else train_images
    whole = [per_epoch_images / s for s in result.history["epoch_seconds"]]
    phase = statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)
    e2e = statistics.median(whole[1:] if len(whole) > 1 else whole)
    ceiling = max(ceilings)
    growth = (probe.rss_mb[-1] - probe.rss_mb[1]) if len(probe.rss_mb) > 2 else None
    return {
        "case": name, "model": cfg.model.name, "input_size": cfg.model.input_size, "batch_size": cfg.train.batch_size,
        "epochs": epochs, "num_workers": n_workers, "cpu_threads": threads, "precision": record.device["precision"],
        "cpu_plan": probe.cpu_plan,
        "train_images_per_epoch": per_epoch_images,
        "end_to_end_images_per_s": round(e2e, 1), "per_epoch_end_to_end_images_per_s": [round(v, 1) for v in whole],
        "train_phase_images_per_s": round(phase, 1), "per_epoch_images_per_s": [round(v, 1) for v in per_epoch],
        "ceiling_images_per_s": round(ceiling, 1),
        "ceilings": [round(c, 1) for c in ceilings],
        "ratio": round(phase / ceiling, 3), "end_to_end_ratio": round(e2e / ceiling, 3), "wall_s": round(wall, 1),
        "ceiling_beside_loader_images_per_s": round(max(beside), 1) if beside else None,
        "ceilings_beside_loader": [round(c, 1) for c in beside],
        "ratio_beside_loader": round(phase / max(beside), 3) if beside else None,
        "best_val_acc": result.best_val_acc, "val_acc_per_epoch": result.history["val_acc"], "ok": result.ok,
        "rss_mb_per_epoch": [round(v, 1) for v in probe.rss_mb],
        "rss_growth_after_epoch_2_mb": round(growth, 1) if growth is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--lake", type=Path, help="an existing demo lake (default: generate one)")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the demo case (eva02_tiny runs 3)")
    parser.add_argument("--workers", default="auto", help="data.num_workers (default: auto, as make train)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet = logging.getLogger("sustain")  # INFO records must reach the RSS probe, but nothing is printed
    quiet.setLevel(logging.INFO)
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    lake = ensure_lake(args.lake)
    rows = []
    for name in args.only or list(CASES):
        epochs = args.epochs if name == "demo" else 3
        row = run_case(name, CASES[name], lake, epochs, args.workers)
        rows.append(row)
        print(f"{name:16s} end-to-end {row['end_to_end_images_per_s']:8.1f} img/s   train phase "
              f"{row['train_phase_images_per_s']:8.1f} img/s   ceiling "
              f"{row['ceiling_images_per_s']:8.1f} img/s   ratio {row['ratio']:.3f}   "
              f"workers {row['num_workers']}, threads {row['cpu_threads']}   RSS/epoch {row['rss_mb_per_epoch']}")
    write_result(args.json, {"results": rows})
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
