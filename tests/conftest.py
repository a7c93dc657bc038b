"""Shared fixtures: the demo lake (built once per session), config files, the in-process CLI."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


# --------------------------------------------------------------------------- parallel workers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the files with slow tests are handed out first and the quick files last:
    they fill the gaps at the end, so both workers finish at about the same time."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow_files = {item.path for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its order


@pytest.fixture(scope="session", autouse=True)
def share_the_cores_between_workers():
    """Under pytest-xdist (`make test` runs `-n 2`), each worker's torch gets its share of the cores:
    two workers of two threads each on two cores spin against each other in OpenMP."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        yield
        return
    import torch

    from sustain.utils import cpu_count

    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_count() // workers))
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------- demo lake


@dataclass(frozen=True)
class DemoLake:
    root: Path
    stats: dict[str, Any]  # what make_demo_lake returned (also in root/demo_lake.json)


@pytest.fixture(scope="session")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> DemoLake:
    """The default demo lake (seed 0, default size), generated once. Treat it as read-only:
    point caches elsewhere (`demo_config` does)."""
    from sustain.data.demo import make_demo_lake

    root = tmp_path_factory.mktemp("demo_lake") / "demo"
    return DemoLake(root, make_demo_lake(root, seed=0))


def demo_config_dict(lake_root: Path, output_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """configs/demo.yaml as a raw mapping, reading `lake_root` and writing to `output_dir`."""
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text(encoding="utf-8"))
    raw["data"]["root"] = str(lake_root)
    if cache_dir is not None:
        raw["data"]["cache_dir"] = str(cache_dir)
    raw["output_dir"] = str(output_dir)
    return raw


@pytest.fixture
def demo_config(demo_lake: DemoLake, tmp_path: Path) -> dict[str, Any]:
    """A fresh, mutable demo config on the session lake: output in tmp_path/run, and the
    decode cache shared by the session beside (not inside) the lake."""
    return demo_config_dict(demo_lake.root, tmp_path / "run", cache_dir=demo_lake.root.parent / "cache")


# --------------------------------------------------------------------------- config files


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(mapping_or_text, name='config.yaml') -> Path of a YAML file in tmp_path."""

    def write(content: dict[str, Any] | str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


# --------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """run_cli('train', '--config', path) -> CliResult: `sustain …` in-process, output captured.

    `cli.setup_logging` binds its handler to the sys.stdout of the moment, so the
    "sustain" logger's handlers are cleared before each call and restored after:
    every call logs into this test's capture, never into a stale one.
    """
    from sustain.cli import main

    logger = logging.getLogger("sustain")

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()
        saved = (list(logger.handlers), logger.level, logger.propagate)
        logger.handlers.clear()
        try:
            code = main([str(a) for a in argv])
        finally:
            logger.handlers[:] = saved[0]
            logger.setLevel(saved[1])
            logger.propagate = saved[2]
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def sustain_log(caplog: pytest.LogCaptureFixture):
    """caplog, attached to the "sustain" logger itself: setup_logging turns its propagation off."""
    logger = logging.getLogger("sustain")
    saved = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _ShuffledScandir:
    """An os.scandir stand-in that lists entries in a random order."""

    def __init__(self, real, path, rng):
        with real(path) as it:
            self.entries = list(it)
        rng.shuffle(self.entries)
        self._iter = iter(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iter)

    def close(self):
        pass


@pytest.fixture
def shuffled_scandir(monkeypatch: pytest.MonkeyPatch):
    """Make os.scandir list every folder in a seeded random order (not the filesystem's)."""
    import os

    import numpy as np

    real, rng = os.scandir, np.random.default_rng(11)
    monkeypatch.setattr(os, "scandir", lambda p: _ShuffledScandir(real, p, rng))
