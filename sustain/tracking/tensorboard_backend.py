"""TensorBoard: event files in the run folder, one `SummaryWriter` per run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..config import Config
from ..utils import flatten

log = logging.getLogger("sustain.tracking")


class TensorBoardBackend:
    """Scalars, the first augmented batch as an image grid, and the confusion matrix at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.writer: Any = None
        self.step = 0  # batches seen by the whole run: where a resumed run continues
        self.images_logged = False
        self.mean = self.std = None

    def start(self, cfg: Config, data_config: Mapping[str, Any], params: Mapping[str, Any] | None,
              resume: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.step = int(resume.get("tensorboard_step", 0))
        self.images_logged = bool(resume.get("images_logged", False))
        self.mean, self.std = data_config.get("mean"), data_config.get("std")
        # purge_step hides, in TensorBoard, the events a crashed run wrote after its checkpoint,
        # and on a fresh start (0) those of an earlier run in this folder
        self.writer = SummaryWriter(str(self.out_dir), purge_step=self.step + 1 if resume else 0)
        if not resume:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(cfg.to_dict()).items()))
        log.info("📈 TensorBoard: tensorboard --logdir %s", self.out_dir.parent)

    def batch(self, step: int, images: Any) -> None:
        self.step = step
        if self.writer is not None and not self.images_logged and images is not None and len(images):
            self._image_grid(images)

    def scalars(self, values: Mapping[str, float], step: int, send: bool = True) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def finish(self, out_dir: Path, status: str, stop_reason: str | None = None) -> None:
        if self.writer is not None and (out_dir / artifacts.CONFUSION_PNG).is_file():  # the report's plot
            from PIL import Image

            with Image.open(out_dir / artifacts.CONFUSION_PNG) as im:
                pixels = np.asarray(im.convert("RGB"))
            self.writer.add_image("val/confusion_matrix", pixels, self.step, dataformats="HWC")

    def interrupted(self, reason: str) -> None:
        pass  # the event files end where the run stopped; a resume continues them

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"tensorboard_step": self.step, "images_logged": self.images_logged}

    def record(self) -> dict[str, Any]:
        return {"tensorboard": True, "tensorboard_step": self.step}

    def _image_grid(self, images: Any) -> None:
        import torch
        from torchvision.utils import make_grid

        x = images[:32].detach().float().cpu()
        if self.mean is not None and self.std is not None:  # undo the normalisation: show what the model sees
            x = x * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        self.writer.add_image("train/first_batch_augmented", make_grid(x.clamp(0, 1), nrow=8), self.step)
        self.images_logged = True
