"""Graceful stops: SIGINT (Ctrl-C, the Jupyter kernel's interrupt), SIGTERM and SIGUSR1.

While training, a signal only raises a flag. The loop sees it at the next
update boundary, saves a mid-epoch checkpoint and raises `Interrupted`, whose
message is the one line that says how to continue. A second Ctrl-C while the
checkpoint is written is ignored, so the save always completes; a second
Ctrl-C before the save starts stops at once (the previous `last.pth` stays
intact: every write is atomic).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import SustainError

log = logging.getLogger("sustain.training.interrupts")

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Interrupted(SustainError):
    """Training stopped on a signal after saving its position: the loop raises it where a resume continues,
    `epoch`, `step` of `total` (step 0: the start of that epoch); the engine records it in run.json and lets
    it go on. Its message is the one line that says how to continue; exit code 128 + the signal number."""

    def __init__(self, signum: int, epoch: int, step: int, total: int, saved_in: Path, world: int) -> None:
        self.signum, self.epoch, self.step, self.total = signum, epoch, step, total
        self.name = signal_name(signum)
        where = f"epoch {epoch}, step {step} of {total}" if step else f"the end of epoch {epoch - 1}"
        self.reason = f"interrupted by {self.name} at {where}"  # run.json's stop_reason
        command = resume_command(sys.argv, world, int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None)
        super().__init__(f"Training {self.reason}; saved in {saved_in}. Continue with: {command}")
        self.exit_code = 128 + signum  # 130 SIGINT, 143 SIGTERM, 138 SIGUSR1 (Linux)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequests:
    """The flag the signal handlers raise; the training loop polls `signum` (0: keep going)."""

    def __init__(self) -> None:
        self.signum = 0
        self.saving = False

    def _handle(self, signum: int, frame) -> None:
        if self.saving:
            log.warning("⚠️  %s: the checkpoint is being written; it completes first", signal_name(signum))
            return
        if self.signum and signum == signal.SIGINT:  # a second Ctrl-C: stop now, the last save stays
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum
            log.warning("⚠️  %s received: stopping after the current step and saving the position "
                        "(Ctrl-C again to stop at once, without saving)", signal_name(signum))

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Handle the stop signals while the block runs (main thread only), then restore the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def saving_block(self) -> Iterator[None]:
        """Signals that arrive during a checkpoint write wait for it."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False


def resume_command(argv: Sequence[str], world: int, local_world: int | None = None) -> str:
    """The exact command that continues this run: the same CLI arguments with `--resume auto`.

    Called from the Python API (a notebook, a script), it is `train(cfg, resume="auto")`.
    """
    program = Path(argv[0]).name if argv else ""
    args = list(argv[1:])
    if program not in ("sustain", "__main__.py") or not {"train", "crossval"} & set(args):
        return 'train(cfg, resume="auto")'
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    if world > 1:
        prefix = ["torchrun", f"--nproc_per_node={local_world or world}", "-m", "sustain"]
    elif program == "sustain":
        prefix = ["sustain"]
    else:
        prefix = ["python", "-m", "sustain"]
    return shlex.join([*prefix, *kept, "--resume", "auto"])


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader workers leave Ctrl-C and SIGUSR1 to the training process, which stops them after saving.

    SIGTERM keeps its default: a worker that ignored it could not be terminated at exit.
    """
    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
