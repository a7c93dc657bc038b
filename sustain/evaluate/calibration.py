"""Temperature scaling (issue #29): one scalar T fitted on the val split's fine-labelled logits.

Calibrated probabilities are ``softmax(logits / T)``. T > 0 never moves the arg-max, so
accuracy, F1 and the confusion matrix are unchanged; only the confidences are, which is
what expected calibration error (ECE), the accept-or-review threshold and the operator read.

The fit is 1-D: minimise the val negative log-likelihood over log T with torch's LBFGS.
scikit-learn 1.9's ``CalibratedClassifierCV(method="temperature")`` calibrates an
*estimator*; wrapping stored logits in a frozen pseudo-estimator would cost more code than
this fit, and the result is the same scalar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .metrics import expected_calibration_error, split_fine_and_set
from .selective import choose_thresholds, decision_level

# Fewer fine-labelled val images than this and T stays 1: one scalar is cheap to fit, but
# below ~50 images a handful of errors decide it, and the ECE bins (10) that would show
# whether it helped hold a few images each.
MIN_FIT_IMAGES = 50
T_RANGE = (0.05, 20.0)  # a fit outside it is a degenerate optimum (no errors, or no signal)


@dataclass(frozen=True)
class TemperatureFit:
    """The temperature in use and how it was chosen (run.json, best_model.json's ``calibration``)."""

    temperature: float
    method: str  # "fitted", "kept" (auto, but T = 1 for `reason`), "fixed" (a number in the config), "off"
    reason: str | None = None
    n_images: int = 0
    nll_before: float | None = None
    nll_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_temperature(logits: torch.Tensor | np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)`` as a float32 numpy array."""
    t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    return (t / float(temperature)).softmax(dim=1).numpy()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes at temperature T."""
    return float(torch.nn.functional.cross_entropy(logits.float() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 that minimises the NLL of `labels` under ``softmax(logits / T)``."""
    logits = logits.detach().float()
    log_t = torch.zeros(1, requires_grad=True)  # log T: positive T without a constraint
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def fine_logits(logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """(logits, class index) of the fine-labelled rows; set-labelled rows have no single truth."""
    t = np.asarray(targets) > 0.5
    fine, _ = split_fine_and_set(t)
    return (torch.as_tensor(np.asarray(logits, dtype=np.float32)[fine]),
            torch.as_tensor(t[fine].argmax(axis=1), dtype=torch.long))


def choose_temperature(setting: str | float, logits: Any, targets: Any,
                       min_images: int = MIN_FIT_IMAGES) -> TemperatureFit:
    """`calibration.temperature` applied to the val logits: ``"auto"`` fits T (or keeps 1 and
    says why), ``"off"`` keeps 1, a number is used as given."""
    if setting == "off":
        return TemperatureFit(1.0, "off", "calibration.temperature is off")
    x, y = fine_logits(logits, targets)
    n = len(y)
    if setting != "auto":
        t = float(setting)
        before, after = (nll(x, y), nll(x, y, t)) if n else (None, None)
        return TemperatureFit(t, "fixed", "calibration.temperature set in the config", n, before, after)
    if n < min_images:
        return TemperatureFit(1.0, "kept", f"val has {n} fine-labelled image(s), fewer than the {min_images} "
                              "a fit needs", n)
    before = nll(x, y)
    if bool((x.argmax(dim=1) == y).all()):
        return TemperatureFit(1.0, "kept", "val has no misclassified image: its NLL falls without bound as T "
                              "shrinks, so a fit would only make the model overconfident", n, before, before)
    t = fit_temperature(x, y)
    after = nll(x, y, t)
    if not math.isfinite(t) or not T_RANGE[0] <= t <= T_RANGE[1]:
        return TemperatureFit(1.0, "kept", f"the fit found T = {t:.3g}, outside {T_RANGE}", n, before, before)
    if not after < before:
        return TemperatureFit(1.0, "kept", "the fit did not lower val NLL", n, before, before)
    return TemperatureFit(t, "fitted", None, n, before, after)


def ece_before_after(logits: Any, targets: Any, temperature: float) -> tuple[float | None, float | None]:
    """ECE of the raw softmax and of the calibrated probabilities (fine-labelled rows)."""
    return (expected_calibration_error(apply_temperature(logits, 1.0), targets),
            expected_calibration_error(apply_temperature(logits, temperature), targets))


def reliability(probs: np.ndarray, targets: np.ndarray, n_bins: int = 10) -> dict[str, list[Any]]:
    """The reliability diagram's bins: mean confidence, accuracy and count per equal-width bin."""
    t = np.asarray(targets) > 0.5
    fine, _ = split_fine_and_set(t)
    conf = probs[fine].max(axis=1)
    correct = probs[fine].argmax(axis=1) == t[fine].argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list[Any]] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        here = which == b
        out["count"].append(int(here.sum()))
        out["confidence"].append(float(conf[here].mean()) if here.any() else None)
        out["accuracy"].append(float(correct[here].mean()) if here.any() else None)
    return out


def calibrate(logits: Any, targets: Any, taxonomy: Any, temperature: str | float = "auto",
              accept_accuracy: float | None = None) -> dict[str, Any]:
    """What the end of training stores (best_model.json, run.json): T from the val logits and,
    with a target, the accept-or-review thresholds chosen on the calibrated val probabilities."""
    fit = choose_temperature(temperature, logits, targets)
    out: dict[str, Any] = {**fit.to_dict(), "accept_accuracy": accept_accuracy, "accept_on": None,
                           "accept_threshold": None, "accept_thresholds": None}
    if accept_accuracy is not None:
        on = decision_level(taxonomy)
        chosen = choose_thresholds(apply_temperature(logits, fit.temperature), np.asarray(targets), taxonomy,
                                   accept_accuracy)
        out.update(accept_on=on, accept_threshold=chosen[on], accept_thresholds=chosen)
    return out


# best_model.json keys the calibration sets; the rest of `calibrate`'s record sits under "calibration"
META_KEYS = ("temperature", "accept_accuracy", "accept_on", "accept_threshold")


def calibration_meta_fields(calibration: dict[str, Any]) -> dict[str, Any]:
    """The best_model.json fields of a `calibrate` record."""
    return {**{k: calibration[k] for k in META_KEYS},
            "calibration": {k: v for k, v in calibration.items() if k not in META_KEYS}}


def calibration_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The `calibrate` record back from best_model.json (T = 1, no decision, for an older one)."""
    return {**(meta.get("calibration") or {}), "temperature": float(meta.get("temperature") or 1.0),
            **{k: meta.get(k) for k in META_KEYS[1:]}}


def uncalibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The raw softmax back from calibrated probabilities: softmax(T · log p) (the logits up to a
    per-row constant), for the before/after views of a stored ``predictions_*.npz``."""
    return apply_temperature(temperature * np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)), 1.0)
