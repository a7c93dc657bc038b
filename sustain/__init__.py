"""Sustain: train, check and deploy a waste-sorting image classifier.

Rooms, bottom to top (nothing imports upward; see docs/architecture.md):
base (errors, config, taxonomy, artifacts, …) → data → evaluate → report,
tracking → training → deploy → diagnostics → cli.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__", "load_config", "train"]


def __getattr__(name: str):
    # Lazy, so `import sustain` stays light and torch is imported only when needed.
    if name == "Predictor":
        from .deploy import Predictor

        return Predictor
    if name == "load_config":
        from .config import load_config

        return load_config
    if name == "train":
        from .training import train

        return train
    raise AttributeError(f"module 'sustain' has no attribute {name!r}")
