"""The step guards (SPEC §6): what a non-finite loss or gradient does to a run.

`Guards` owns the GradScaler and the guard state, as timm's `NativeScaler`
owns its scaler: the loop asks it to run backward and the optimizer step, and
tells it about every non-finite step; it answers with the next rung of the
escalation ladder (AMP off, then the LR halved, then stop). The ladder
(`next_escalation`) is a pure function; the verdict on an epoch's skipped
share is the loop's (`loop_state.health_verdict`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import GuardConfig
from ..device import PrecisionPlan

log = logging.getLogger("sustain.training.guards")

COUNTS = ("steps", "skipped", "nonfinite_loss", "nonfinite_grad", "data_errors", "empty_batches")


def next_escalation(amp_on: bool, lr_halved: bool) -> str:
    """The next rung: AMP off, then LR halved, then stop."""
    if amp_on:
        return "amp_off"
    if not lr_halved:
        return "lr_halved"
    return "stop"


def make_scaler(device_type: str, precision: PrecisionPlan, amp_on: bool) -> torch.amp.GradScaler:
    """A GradScaler for fp16; a disabled one (a no-op wrapper) otherwise."""
    enabled = amp_on and precision.grad_scaler
    return torch.amp.GradScaler(device_type if device_type in ("cuda", "mps") else "cpu", enabled=enabled)


def guarded_optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                           grad_clip: float | None) -> bool:
    """Unscale, check the gradient norm, clip, step; False (and no step) when the norm is not finite.

    With an enabled GradScaler, `unscale_` has recorded the inf, so `update()` backs
    the scale off exactly as `scaler.step` would have; the grads are then dropped.
    """
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    if not torch.isfinite(norm):
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return False
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return True


@dataclass
class GuardState:
    """What the guards know across steps and epochs (saved in last.pth)."""

    amp_on: bool = False
    lr_factor: float = 1.0  # the guards' multiplier on the scheduled LR: 0.5 once halved
    streak: int = 0  # non-finite steps in a row
    escalations: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    @property
    def lr_halved(self) -> bool:
        return self.lr_factor < 1.0


class Guards:
    """The guards of one run: the GradScaler, the escalation ladder and the counts."""

    def __init__(self, cfg: GuardConfig, device_type: str, precision: PrecisionPlan, amp_on: bool) -> None:
        self.cfg, self.device_type, self.precision = cfg, device_type, precision
        self.state = GuardState(amp_on=amp_on)
        self.scaler = make_scaler(device_type, precision, amp_on)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> bool:
        """The guarded update; False when the gradient norm was not finite (the step was skipped)."""
        if guarded_optimizer_step(model, optimizer, self.scaler, grad_clip):
            self.state.streak = 0
            return True
        return False

    def on_nonfinite(self, epoch: int, step: int, kind: str) -> dict[str, Any] | None:
        """Count a non-finite step; after `escalate_after` in a row, climb one rung and return the event.

        AMP off replaces the scaler here; the caller applies a halved LR to its optimizer and
        stops the run on "stop"."""
        g = self.state
        g.streak += 1
        if g.streak < self.cfg.escalate_after:
            return None
        action = next_escalation(g.amp_on, g.lr_halved)
        streak, g.streak = g.streak, 0
        event = {"epoch": epoch, "step": step, "action": action, "after": f"{streak} non-finite steps in a row"}
        if action == "amp_off":
            g.amp_on = False
            self.scaler = make_scaler(self.device_type, self.precision, amp_on=False)
            event["message"] = "mixed precision turned off; training continues in fp32"
        elif action == "lr_halved":
            g.lr_factor *= 0.5
            event["message"] = f"learning rate halved (now ×{g.lr_factor:g} of the schedule)"
        else:
            event["message"] = "the run stops: AMP off and a halved learning rate did not help"
        g.escalations.append(event)
        log.warning("⚠️  Escalation (%s): %s → %s", kind, event["after"], event["message"])
        return event

    # ------------------------------------------------------------------ last.pth

    def state_dict(self) -> dict[str, Any]:
        g = self.state
        return {"amp_on": g.amp_on, "lr_factor": g.lr_factor, "streak": g.streak,
                "escalations": list(g.escalations), "totals": dict(g.totals)}

    def load_state_dict(self, saved: dict[str, Any], scaler: dict[str, Any] | None, *,
                        keep_lr_factor: bool = True) -> None:
        """Continue from a saved run. AMP stays off if it was turned off (or is off now);
        `keep_lr_factor=False` (the user chose a new LR) drops an automatic halving."""
        g = self.state
        g.amp_on = bool(saved["amp_on"]) and g.amp_on
        g.lr_factor = float(saved["lr_factor"]) if keep_lr_factor else 1.0
        g.streak = int(saved["streak"])
        g.escalations, g.totals = list(saved["escalations"]), dict(saved["totals"])
        self.scaler = make_scaler(self.device_type, self.precision, g.amp_on)
        if self.scaler.is_enabled() and scaler:
            self.scaler.load_state_dict(scaler)
