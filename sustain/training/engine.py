"""The training run (SPEC §6, §7): `train(cfg, resume=None) -> RunResult`.

Read `_train` top to bottom: it is the run, and it hands `cfg` down once to
each stage. `setup.build_trainer` prints the startup sequence (seed, device, model,
transform validation, data summary, sanity check) and builds one `Trainer`;
`resume.load_resume` continues a saved run; `loop.run_epochs` trains with the
step guards, validates, writes the metrics history and the checkpoints;
`finish.finish` evaluates the best weights, prints the Success Criteria
Checklist, writes `run.json` and builds the report (`finish.interrupted` when a
stop signal ended the run).

Under `torchrun` the same loop runs DDP (gloo on CPU, NCCL on CUDA); only
rank 0 prints, shows bars and writes files, and validation gathers every
rank's predictions so each sample counts exactly once.
"""

from __future__ import annotations

import logging
import time

import torch

from ..artifacts import prepare_output_dir
from ..config import Config
from ..data import check_sources, record_image_cache
from ..taxonomy import build_taxonomy
from ..tracking import Tracker
from . import console
from .distributed import Distributed
from .finish import RunResult, finish, interrupted
from .hooks import RunStart
from .interrupts import Interrupted
from .loop import run_epochs
from .loop_state import LoopState
from .resume import load_resume
from .rng import restore_rng_state
from .setup import build_trainer

log = logging.getLogger("sustain.training.engine")


# =========================================================================== the run


def train(cfg: Config, resume: str | None = None) -> RunResult:
    """Train the model `cfg` describes; `resume` is None, 'auto' or a checkpoint path."""
    threads = torch.get_num_threads()
    try:
        with Tracker.create(cfg) as tracker:  # tracking: an unreachable server is exit 2; closed on any exit
            return _train(cfg, resume, tracker)
    finally:
        torch.set_num_threads(threads)  # the CPU plan may lower it for the run


def _train(cfg: Config, resume: str | None, tracker: Tracker) -> RunResult:
    console.ensure_console_logging()
    started = time.perf_counter()
    dist = Distributed.from_env()
    if not dist.is_main:
        logging.getLogger("sustain").setLevel(logging.WARNING)
    out_dir = prepare_output_dir(cfg.output_dir)  # before anything slow: fail early
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    check_sources(cfg, taxonomy)  # likewise: a missing dataset must not wait for a model download

    trainer, setup = build_trainer(cfg, dist, taxonomy, out_dir, tracker)
    state = LoopState()
    resume_path, saved = load_resume(trainer, state, resume)
    trainer.fwd_model = dist.wrap(torch.compile(trainer.model) if cfg.model.compile else trainer.model, trainer.device)
    facts = RunStart(cfg, setup.data_config, setup.lake.summary, {  # the precision a resume kept
        "device": trainer.plan.line, "precision": trainer.precision.label, **trainer.precision.params(),
        "workers": setup.workers, "cpu_threads": torch.get_num_threads(), "world_size": dist.world}, saved or {})
    for hook in trainer.hooks.run_start:
        hook(facts)
    if saved is not None:  # last, so the epochs draw the same random numbers as the uninterrupted run
        rng_states = saved["rng"]
        restore_rng_state(rng_states[dist.rank] if dist.rank < len(rng_states) else rng_states[0])
        state.note_event("resumed", state.epoch + (1 if state.step else 0), state.step, trainer.loaders.train_batches,
                         f"from {resume_path.name} saved at {saved.get('saved_at', '?')}")
        del saved
    setup.timings["setup_seconds"] = time.perf_counter() - started

    console.nothing_left(state, cfg.train.epochs)
    state.start_segment()
    try:
        with trainer.stop.installed():
            run_epochs(trainer, state)
    except Interrupted as stop:  # its message says how to continue
        state.end_segment()
        setup.timings["train_seconds"] = state.train_seconds()  # every start's, not only this one's
        interrupted(trainer, state, setup, stop)
        raise
    state.end_segment()
    setup.timings["train_seconds"] = state.train_seconds()
    if setup.img_cache is not None and dist.is_main:  # its disk use: logged, and in data_summary.json and run.json
        log.info(record_image_cache(out_dir, setup.lake, setup.img_cache))

    result = finish(trainer, state, setup, started)
    dist.close()
    return result
