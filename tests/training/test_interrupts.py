"""Interrupt-safe training with real processes and real signals (issue 12).

Every interrupted run below is resumed with `--resume auto` until it completes, and its
metrics history must equal the uninterrupted run's (timing keys aside): the epoch that
was interrupted too, its train loss and accuracy included.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    PYTHON,
    REPO_ROOT,
    TINY_CLASSES,
    deterministic_history,
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    run_sustain,
    tiny_config,
    tiny_config_dict,
    write_yaml,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- the stop requests, in-process (fast)


@pytest.mark.parametrize(("argv", "world", "local", "expected"), [
    (["/usr/bin/sustain", "train", "--config", "my run.yaml"], 1, None,
     "sustain train --config 'my run.yaml' --resume auto"),
    (["/x/sustain/__main__.py", "train", "--resume", "runs/a/last.pth", "--config", "c.yaml"], 1, None,
     "python -m sustain train --config c.yaml --resume auto"),
    (["sustain", "crossval", "--resume=auto", "--folds", "3"], 1, None, "sustain crossval --folds 3 --resume auto"),
    (["sustain", "train", "--config", "c.yaml"], 2, None, "torchrun --nproc_per_node=2 -m sustain train --config c.yaml --resume auto"),
    (["sustain", "train", "--config", "c.yaml"], 8, 4, "torchrun --nproc_per_node=4 -m sustain train --config c.yaml --resume auto"),
    (["ipykernel_launcher.py", "-f", "kernel.json"], 1, None, 'train(cfg, resume="auto")'),
    (["sustain", "evaluate", "runs/a"], 1, None, 'train(cfg, resume="auto")'),
    ([], 1, None, 'train(cfg, resume="auto")'),
])
def test_the_resume_command_repeats_the_users_command_with_resume_auto(argv, world, local, expected) -> None:
    from sustain.training.interrupts import resume_command

    assert resume_command(argv, world, local) == expected


def test_a_signal_only_raises_the_flag_the_first_one_wins_and_a_second_ctrl_c_stops_at_once(sustain_log) -> None:
    from sustain.training.interrupts import StopRequests

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    stop = StopRequests()
    with stop.installed() as same:
        assert same is stop and stop.signum == 0
        send_or_fail(signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1
        assert sustain_log.messages == ["⚠️  SIGUSR1 received: stopping after the current step and saving the position "
                                   "(Ctrl-C again to stop at once, without saving)"]
        send_or_fail(signal.SIGTERM)  # a second request keeps the first reason
        assert stop.signum == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before  # the old handlers are back
    first_ctrl_c = StopRequests()
    with first_ctrl_c.installed():
        send_or_fail(signal.SIGINT)  # the first Ctrl-C saves the position: it only raises the flag
    assert first_ctrl_c.signum == signal.SIGINT


def send_or_fail(signum: int) -> None:
    """Send `signum` to this process; a KeyboardInterrupt from it fails the test instead of ending pytest."""
    try:
        os.kill(os.getpid(), signum)
    except KeyboardInterrupt:
        pytest.fail(f"{signal.Signals(signum).name} stopped at once: only a second Ctrl-C may")


def test_signals_during_a_checkpoint_write_wait_for_it(sustain_log) -> None:
    from sustain.training.interrupts import StopRequests

    stop = StopRequests()
    stop.signum = signal.SIGTERM  # already stopping: a Ctrl-C now would stop at once, except while saving
    with stop.installed():
        with pytest.raises(RuntimeError), stop.saving_block():
            assert stop.saving
            send_or_fail(signal.SIGINT)  # waits: no KeyboardInterrupt, the save completes
            assert sustain_log.messages == ["⚠️  SIGINT: the checkpoint is being written; it completes first"]
            raise RuntimeError("the write failed")
        assert not stop.saving  # reset even when the write raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    fresh = StopRequests()
    with fresh.installed(), fresh.saving_block():
        os.kill(os.getpid(), signal.SIGUSR1)
    assert fresh.signum == 0  # a signal during the save is not taken for a stop request


def test_outside_the_main_thread_no_handler_is_installed() -> None:
    import threading

    from sustain.training.interrupts import StopRequests

    seen = {}

    def worker() -> None:
        with StopRequests().installed() as stop:
            seen["stop"], seen["handler"] = stop, signal.getsignal(signal.SIGUSR1)

    before = signal.getsignal(signal.SIGUSR1)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert isinstance(seen["stop"].signum, int) and seen["handler"] is before


def test_interrupted_exits_with_128_plus_the_signal_and_names_it() -> None:
    from sustain.training.interrupts import Interrupted, signal_name

    err = Interrupted(signal.SIGTERM, 2, 3, 10, Path("run"), 1)
    assert (err.signum, err.exit_code) == (signal.SIGTERM, 128 + signal.SIGTERM)
    assert err.reason == "interrupted by SIGTERM at epoch 2, step 3 of 10"
    assert str(err).startswith("Training interrupted by SIGTERM at epoch 2, step 3 of 10; saved in run. Continue with: ")
    at_end = Interrupted(signal.SIGINT, 3, 0, 10, Path("run"), 1)
    assert at_end.reason == "interrupted by SIGINT at the end of epoch 2" and at_end.exit_code == 130
    assert signal_name(signal.SIGINT) == "SIGINT" and signal_name(999) == "signal 999"


def test_a_loader_worker_ignores_ctrl_c_and_sigusr1_but_not_sigterm() -> None:
    from sustain.training.interrupts import ignore_stop_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        for s in before:  # as in a fresh worker: the defaults (whatever this process had set)
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        ignore_stop_signals(0)
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- real runs (slow)
# Drop path and in-process augmentation draw from the global RNG streams; a save after every step.
SECTIONS = {"train": {"epochs": 3, "checkpoint_every_minutes": 1e-6}, "model": {"drop_path_rate": 0.1}}


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


@pytest.fixture(scope="module")
def reference(tiny_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run's history, on one thread as the subprocesses (module fixtures precede `one_thread`)."""
    from sustain.training.engine import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(tiny_config(tiny_lake, tmp_path_factory.mktemp("reference") / "run", **SECTIONS))
    finally:
        torch.set_num_threads(threads)
    assert result.ok
    return deterministic_history(result.history)


def start(args: list[str], cwd: Path = REPO_ROOT) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "sustain", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """Read the process's stdout until a line holds `marker`; return what was read."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if marker in line:
            return "".join(seen)
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout}s:\n{''.join(seen)[-3000:]}"
    raise AssertionError(f"the process ended before {marker!r}:\n{''.join(seen)[-3000:]}")


def wait_for_position(proc: subprocess.Popen, mark: tuple[int, int], timeout: float = 120) -> str:
    """Read stdout until a run saves its position at `mark` (epoch, step) or later."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        saved = re.search(r"Saved the position: epoch (\d+), step (\d+) of", line)
        if saved and (int(saved[1]), int(saved[2])) >= mark:
            return "".join(seen)
        assert time.monotonic() < deadline, f"no save at {mark} within {timeout}s:\n{''.join(seen)[-3000:]}"
    raise AssertionError(f"the process ended before a save at {mark}:\n{''.join(seen)[-3000:]}")


def finish(proc: subprocess.Popen, before: str = "") -> tuple[int, str]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, before + out


@pytest.mark.slow
def test_kill_9_at_five_random_moments_then_resume_ends_like_an_uninterrupted_run(tiny_lake: Path, tmp_path: Path,
                                                                                  reference: dict) -> None:
    config = write_yaml(tmp_path / "c.yaml", tiny_config_dict(tiny_lake, tmp_path / "run", **SECTIONS))
    # Five moments spread over the run, tied to its progress rather than the clock (a fast machine
    # finishes the whole tiny run within a second): after a given save, plus up to about one step,
    # so that some kills land inside a step and some inside the next save.
    rng = random.Random(12)
    marks = sorted(rng.sample([(e, s) for e in (1, 2, 3) for s in range(1, 6)], 5))
    positions = []
    for mark in marks:
        proc = start(["train", "--config", str(config), "--resume", "auto"])
        wait_for_position(proc, mark)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert finish(proc)[0] == -signal.SIGKILL
        if (tmp_path / "run" / "last.pth").is_file():
            last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
            positions.append((last["epoch"], last["step"]))
    assert positions == sorted(positions) and any(0 < step for _, step in positions), positions

    resumed = run_sustain(["train", "--config", str(config), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert deterministic_history(read_json(tmp_path / "run" / "metrics_history.json")) == reference
    events = read_json(tmp_path / "run" / "run.json")["interruptions"]
    assert [e["event"] for e in events].count("resumed") >= 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1])
def test_sigint_sigterm_sigusr1_mid_epoch_save_the_position_and_resume_exactly(tiny_lake: Path, tmp_path: Path,
                                                                               reference: dict, workers: int) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", **SECTIONS)
    raw["data"]["num_workers"] = workers  # the reference loads in-process: the order must not care
    config = write_yaml(tmp_path / "c.yaml", raw)
    out, previous = tmp_path / "run", 0
    for epoch, sig, code in [(1, signal.SIGINT, 130), (2, signal.SIGTERM, 143), (3, signal.SIGUSR1, 138)]:
        proc = start(["train", "--config", str(config), *(["--resume", "auto"] if epoch > 1 else [])])
        before = wait_for(proc, f"Saved the position: epoch {epoch}, step 2 of 6")
        proc.send_signal(sig)
        returncode, output = finish(proc, before)
        assert returncode == code, output[-3000:]
        name = signal.Signals(sig).name
        assert f"Training interrupted by {name} at epoch {epoch}, step " in output
        assert f"Continue with: python -m sustain train --config {config} --resume auto" in output
        last = torch.load(out / "last.pth", weights_only=True)
        assert last["epoch"] == epoch - 1 and 2 <= last["step"] < 6, (last["epoch"], last["step"])
        assert last["events"][-1]["reason"] == name and last["events"][-1]["step"] == last["step"]
        run = read_json(out / "run.json")
        assert run["status"] == "interrupted" and name in run["stop_reason"]
        if epoch > 1:  # the previous interrupt's epoch continues at its next step
            assert f"Resumed from {out / 'last.pth'} at epoch {epoch - 1}, step {previous} of 6" in output
            assert f"Epoch {epoch - 2}/3:" not in output
        previous = last["step"]

    resumed = run_sustain(["train", "--config", str(config), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert deterministic_history(read_json(out / "metrics_history.json")) == reference
    events = read_json(out / "run.json")["interruptions"]
    assert [(e["event"], e["reason"]) for e in events if e["event"] == "interrupted"] == [
        ("interrupted", "SIGINT"), ("interrupted", "SIGTERM"), ("interrupted", "SIGUSR1")]
    assert [e["event"] for e in events].count("resumed") == 3


@pytest.mark.slow
def test_ctrl_c_marks_the_mlflow_run_killed_and_interrupted_and_a_resume_finishes_it(tiny_lake: Path,
                                                                                    tmp_path: Path) -> None:
    from mlflow import MlflowClient

    raw = tiny_config_dict(tiny_lake, tmp_path / "runs" / "run", **SECTIONS,
                           tracking={"tensorboard": False, "mlflow": {"enabled": True}})
    config = write_yaml(tmp_path / "c.yaml", raw)
    proc = start(["train", "--config", str(config)])
    before = wait_for(proc, "Saved the position: epoch 1, step 2 of 6")
    proc.send_signal(signal.SIGINT)
    returncode, output = finish(proc, before)
    assert returncode == 130, output[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sustain").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["sustain.status"] == "interrupted"
    assert "interrupted by SIGINT at epoch 1, step" in run.data.tags["sustain.stop_reason"]
    record = read_json(tmp_path / "runs" / "run" / "run.json")
    assert record["tracking"]["mlflow"]["run_id"] == run.info.run_id  # the interrupted run names its MLflow run
    (first,) = record["segments"]
    assert record["timings"]["train_seconds"] == pytest.approx(first["train_seconds"], abs=0.05) and first["train_seconds"] > 0

    resumed = run_sustain(["train", "--config", str(config), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    run = client.get_run(run.info.run_id)
    assert (run.info.status, run.data.tags["sustain.status"]) == ("FINISHED", "completed")
    assert run.data.tags["sustain.stop_reason"] == "none"  # the interruption's reason is not left behind
    record = read_json(tmp_path / "runs" / "run" / "run.json")
    segments = record["segments"]  # both starts, the first as its checkpoint recorded it
    assert len(segments) == 2 and segments[0]["train_seconds"] == pytest.approx(first["train_seconds"], abs=0.5)
    assert record["timings"]["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in segments), abs=2e-3)
    assert record["timings"]["train_seconds"] > segments[1]["train_seconds"]


@pytest.mark.slow
def test_a_guard_stop_inside_an_epoch_resumes_at_the_next_step(tiny_lake: Path, tmp_path: Path) -> None:
    from sustain.training.engine import train

    out = tmp_path / "run"
    # amp off: the first escalation halves the LR, the second stops the run, at step 2 of epoch 1.
    guards = {"critical_pct": 50.0}
    stopped = train(tiny_config(tiny_lake, out, train={"epochs": 2},
                                guards={**guards, "escalate_after": 1, "inject_nonfinite_loss": [1, 2]}))
    assert not stopped.ok and stopped.epochs_completed == 0
    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["step"], last["micro_steps"]) == (0, 3, 3)
    assert not (out / "metrics_history.json").exists()  # the unfinished epoch is not recorded

    resumed = train(tiny_config(tiny_lake, out, train={"epochs": 2}, guards=guards), resume="auto")
    assert resumed.ok and resumed.history["epoch"] == [1, 2]
    totals = torch.load(out / "last.pth", weights_only=True)["guard"]["totals"]
    assert (totals["steps"], totals["nonfinite_loss"]) == (2 * 6, 2)  # every step once, none twice
    assert resumed.history["skipped"][0] == pytest.approx(2 / 6)


@pytest.mark.slow
def test_two_process_run_interrupted_on_one_rank_resumes_identically(tmp_path: Path) -> None:
    import psutil

    classes = TINY_CLASSES[:4]
    lake = make_tiny_lake(tmp_path / "lake", classes=classes, per_class=12)
    sections = {"train": {"epochs": 1, "batch_size": 4, "checkpoint_every_minutes": 1e-6}}

    def torchrun(name: str, *extra: str) -> subprocess.Popen:
        raw = tiny_config_dict(lake, tmp_path / name, classes=classes, **sections)
        return subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "sustain", "train", "--config", str(write_yaml(tmp_path / f"{name}.yaml", raw)),
                                 *extra], cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    full = torchrun("full")
    assert finish(full)[0] == 0

    proc = torchrun("run")
    before = wait_for(proc, "Saved the position: epoch 1, step 2 of")
    rank1 = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                 if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)  # one rank only: the others must stop at the same step
    returncode, output = finish(proc, before)
    assert returncode != 0
    assert "Training interrupted by SIGTERM at epoch 1, step " in output
    assert "Continue with: torchrun --nproc_per_node=2 -m sustain train" in output
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert last["epoch"] == 0 and last["step"] >= 2 and len(last["rng"]) == len(last["partial"]) == 2

    resumed = torchrun("run", "--resume", "auto")
    returncode, output = finish(resumed)
    assert returncode == 0, output[-3000:]
    got = deterministic_history(read_json(tmp_path / "run" / "metrics_history.json"))
    assert got == deterministic_history(read_json(tmp_path / "full" / "metrics_history.json"))
