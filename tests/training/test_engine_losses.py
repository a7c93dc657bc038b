"""The partial-label loss, class weights, the guarded optimizer step, the LR of each update and the loop's decisions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sustain.training.guards import Guards, guarded_optimizer_step, next_escalation
from sustain.training.loop_state import health_verdict, is_improvement
from sustain.training.losses import (
    PartialLabelLoss,
    class_counts,
    inverse_frequency_weights,
    sample_weights,
)


def one_hot(labels: list[int], num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), num_classes).float()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_single_label_equals_cross_entropy_with_label_smoothing(smoothing: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 7) * 3
    labels = torch.randint(0, 7, (16,))
    ours = PartialLabelLoss(label_smoothing=smoothing)(logits, one_hot(labels.tolist(), 7))
    ref = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_set_label_is_minus_log_of_the_summed_set_probability() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # "one of class 0 or 2"
    p = logits.softmax(dim=1)[0]
    expected = -math.log(float(p[0] + p[2]))
    assert PartialLabelLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_set_label_gradient_lets_the_model_choose_within_the_set() -> None:
    logits = torch.zeros(1, 4, requires_grad=True)
    PartialLabelLoss()(logits, torch.tensor([[1.0, 1.0, 0.0, 0.0]])).backward()
    g = logits.grad[0]
    assert g[0] == pytest.approx(g[1].item()) and g[0] < 0  # both set members pushed up equally
    assert g[2] > 0 and g[3] > 0  # the others pushed down


def test_loss_is_computed_in_fp32_under_low_precision_logits() -> None:
    logits = (torch.randn(4, 5) * 20).bfloat16()
    loss = PartialLabelLoss(0.1)(logits, one_hot([0, 1, 2, 3], 5))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_class_weights_match_weighted_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(12, 4)
    labels = torch.randint(0, 4, (12,))
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    ours = PartialLabelLoss(class_weights=w)(logits, one_hot(labels.tolist(), 4))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels, weight=w).item(), rel=1e-6)


def test_inverse_frequency_weights_favour_rare_classes_and_count_sets_fractionally() -> None:
    counts = class_counts([(0,), (0,), (0,), (1,), (0, 1)], num_classes=3)
    assert counts.tolist() == [3.5, 1.5, 0.0]
    w = inverse_frequency_weights(counts)
    assert w.dtype == torch.float32  # MPS has no float64
    assert w[1] > w[0] > 0 and w[2] == 0
    assert float(w[:2].mean()) == pytest.approx(1.0)
    sw = sample_weights([(0,), (1,), (0, 1)], w)
    assert sw[1] > sw[0] and sw[2] == pytest.approx(float(w[:2].mean()))


def _tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt


def test_nonfinite_gradient_skips_the_step_and_the_grad_scaler_backs_off() -> None:
    model, opt = _tiny_problem()
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    model.weight.grad.fill_(float("nan"))
    assert not guarded_optimizer_step(model, opt, scaler, grad_clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 512.0  # backed off, as scaler.step would on an overflow
    assert all(p.grad is None for p in model.parameters())

    scaler.scale(model(torch.ones(1, 3)).sum()).backward()  # the next finite step goes through
    assert guarded_optimizer_step(model, opt, scaler, grad_clip=1.0)
    assert not torch.equal(before[0], model.weight)


def test_finite_step_clips_the_gradient_norm() -> None:
    model, opt = _tiny_problem()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = model.weight.detach().clone()
    (model(torch.ones(1, 3)).sum() * 1000).backward()
    assert guarded_optimizer_step(model, opt, scaler, grad_clip=1.0)
    step = torch.cat([(model.weight - before).flatten()])
    assert step.norm() <= 0.1 * 1.0 + 1e-6  # lr × clipped norm (bias included in the clip)


def test_health_verdict_thresholds() -> None:
    assert health_verdict(4.99, 5, 20) == "healthy"
    assert health_verdict(5.0, 5, 20) == "warning"
    assert health_verdict(20.0, 5, 20) == "warning"
    assert health_verdict(20.01, 5, 20) == "critical"


def test_escalation_ladder() -> None:
    assert next_escalation(amp_on=True, lr_halved=False) == "amp_off"
    assert next_escalation(amp_on=False, lr_halved=False) == "lr_halved"
    assert next_escalation(amp_on=False, lr_halved=True) == "stop"


def test_improvement_respects_the_monitor_direction() -> None:
    assert is_improvement(0.5, None, "val_macro_f1")
    assert is_improvement(0.6, 0.5, "val_acc") and not is_improvement(0.5, 0.5, "val_acc")
    assert is_improvement(0.4, 0.5, "val_loss") and not is_improvement(0.6, 0.5, "val_loss")
    assert not is_improvement(0.5, 0.5, "val_loss")  # a tie is no improvement either way
    assert not is_improvement(float("nan"), None, "val_loss")


def test_after_an_epoch_the_loop_decides_in_a_fixed_order() -> None:
    """Guards first (a failed run, a critical epoch), then the last epoch, then early stopping."""
    from engine_helpers import tiny_config

    from sustain.training.loop_state import (
        CONTINUE,
        CRITICAL,
        DONE,
        EARLY_STOP,
        FAILED,
        LoopState,
        decide,
    )

    cfg = tiny_config(Path("lake"), Path("run"), train={"epochs": 5, "early_stopping_patience": 2})

    def decision(epoch: int, bad: int = 0, verdict: str = "healthy", failed: bool = False) -> str:
        return decide(LoopState(epoch=epoch, bad_epochs=bad, failed=failed), cfg, verdict)

    assert decision(2) == CONTINUE
    assert decision(2, bad=2) == EARLY_STOP
    assert decision(5, bad=2) == DONE  # the last epoch is no early stop
    assert decision(5, verdict="critical") == CRITICAL
    assert decision(2, bad=2, verdict="critical") == CRITICAL
    assert decision(3, bad=2, verdict="critical", failed=True) == FAILED
    no_patience = tiny_config(Path("lake"), Path("run"), train={"epochs": 5, "early_stopping_patience": 0})
    assert decide(LoopState(epoch=2, bad_epochs=4), no_patience, "healthy") == CONTINUE


def test_the_lr_of_each_update_is_what_timms_schedule_sets_then() -> None:
    """The loop sets each update's LR from a pure function of the update count (`optim.lr_at`): every param
    group gets exactly what timm's scheduler sets at that update (layer-wise decay included), times the guards'
    factor; the history's `lr` is the head's, the largest."""
    import timm

    from sustain.config import TrainConfig
    from sustain.training.optim import build_optimizer, build_scheduler, head_lr, lr_at, set_lr

    train = TrainConfig(epochs=3, lr=1e-3, warmup_epochs=1, min_lr=1e-6, layer_decay=0.75)
    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    optimizer = build_optimizer(train, model)
    scheduler = build_scheduler(train, optimizer, updates_per_epoch=4)
    assert len({g.get("lr_scale") for g in optimizer.param_groups}) > 2  # layer-wise decay: scaled groups
    for updates in range(14):  # warmup, cosine and past the end
        for factor in (1.0, 0.5, 0.25):
            scheduler.step_update(updates)  # what timm sets ...
            expected = [g["lr"] * factor for g in optimizer.param_groups]  # ... times the guards' halvings
            assert lr_at(optimizer, scheduler, updates, factor) == expected
            set_lr(optimizer, scheduler, updates, factor)
            assert [g["lr"] for g in optimizer.param_groups] == expected
            assert head_lr(optimizer, scheduler, updates, factor) == max(expected)


def test_closing_an_epoch_records_an_early_stop_and_the_console_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """`close_epoch` decides on the state alone and hands the stop down as a value; the console, a
    subscriber of the loop's hooks, prints it."""
    from engine_helpers import tiny_config

    from sustain.taxonomy import build_taxonomy
    from sustain.training.hooks import Hooks
    from sustain.training.loop_state import EARLY_STOP, BestScore, LoopState, close_epoch

    cfg = tiny_config(Path("lake"), Path("run"), train={"epochs": 5, "early_stopping_patience": 2})
    state = LoopState(epoch=2, bad_epochs=1, best=BestScore(score=0.5, epoch=1, val_acc=0.6, macro_f1=0.5))
    tr = {"loss": 1.0, "acc": 0.5, "images_per_second": 10.0, "steps": 6, "skipped": 0, "nonfinite_loss": 0,
          "nonfinite_grad": 0, "data_errors": 0, "empty_batches": 0}
    val = {"loss": 1.2, "acc": 0.55, "macro_f1": 0.4, "samples": 12, "failed": 0, "per_class_f1": [0.4, 0.4, 0.4]}
    end = close_epoch(state, cfg, 3, tr, val, lr=1e-3, seconds=2.0)

    assert (end.decision, end.improved, end.verdict) == (EARLY_STOP, False, "healthy")
    assert state.early_stopped and state.epoch == 3 and state.history.epoch == [3]
    assert state.stop_reason == "early stopping: no gain in val_macro_f1 for 2 epochs (best at epoch 1)"
    hooks = Hooks()
    hooks.attach_console(cfg.train, build_taxonomy(**cfg.taxonomy.model_dump()))
    with caplog.at_level("INFO", logger="sustain"):
        for hook in hooks.stopping:
            hook(end.stopping)
    assert "⏹️  Early stopping: no gain in val_macro_f1 for 2 epochs (best 0.5000 at epoch 1)" in caplog.text


def _fp16_guards(escalate_after: int = 2, **cfg) -> Guards:
    from sustain.config import GuardConfig
    from sustain.device import plan_precision

    fp16 = plan_precision("cuda", "on", bf16_supported=False)  # fp16 + GradScaler: the full ladder
    return Guards(GuardConfig(escalate_after=escalate_after, **cfg), "cpu", fp16, amp_on=True)


def test_the_guards_climb_one_rung_per_streak_amp_off_then_lr_halved_then_stop(sustain_log) -> None:
    guards = _fp16_guards()
    assert guards.scaler.is_enabled() and guards.state.amp_on
    assert guards.on_nonfinite(1, 4, "loss") is None  # one in a row: not yet
    model, opt = _tiny_problem()
    guards.backward(model(torch.ones(1, 3)).sum())
    assert guards.optimizer_step(model, opt, grad_clip=None)  # a finite step ends the streak
    assert guards.on_nonfinite(1, 6, "loss") is None
    event = guards.on_nonfinite(1, 7, "grad")
    assert event == {"epoch": 1, "step": 7, "action": "amp_off", "after": "2 non-finite steps in a row",
                     "message": "mixed precision turned off; training continues in fp32"}
    assert guards.state.amp_on is False and not guards.scaler.is_enabled() and guards.state.streak == 0
    assert sustain_log.messages == ["⚠️  Escalation (grad): 2 non-finite steps in a row → mixed precision turned off; "
                               "training continues in fp32"]
    assert guards.on_nonfinite(2, 1, "loss") is None
    halved = guards.on_nonfinite(2, 2, "loss")
    assert halved["action"] == "lr_halved" and halved["message"] == "learning rate halved (now ×0.5 of the schedule)"
    assert guards.state.lr_factor == 0.5 and guards.state.lr_halved
    guards.on_nonfinite(2, 3, "loss")
    stop = guards.on_nonfinite(2, 4, "loss")
    assert stop["action"] == "stop" and stop["message"].startswith("the run stops: AMP off and a halved")
    assert guards.state.lr_factor == 0.5  # stopping does not halve again
    assert [e["action"] for e in guards.state.escalations] == ["amp_off", "lr_halved", "stop"]


def test_a_skipped_step_keeps_the_streak_and_the_configured_clip_applies() -> None:
    guards = _fp16_guards(escalate_after=3, warn_pct=10.0, critical_pct=30.0)
    guards.on_nonfinite(1, 1, "grad")
    model, opt = _tiny_problem()
    guards.backward(model(torch.ones(1, 3)).sum())
    model.weight.grad.fill_(float("inf"))
    assert not guards.optimizer_step(model, opt, grad_clip=1.0)
    assert guards.state.streak == 1  # a skipped step does not reset the count
    before = model.weight.detach().clone()
    guards.backward(model(torch.ones(1, 3)).sum() * 1000)
    assert guards.optimizer_step(model, opt, grad_clip=1.0)  # the configured clip applies
    assert (model.weight - before).norm() <= 0.1 * 1.0 + 1e-6  # lr × the clipped norm
    assert all(p.grad is None for p in model.parameters())  # the gradients are dropped after the step too


def test_backward_scales_the_loss_while_amp_is_on() -> None:
    guards = _fp16_guards()
    model, _ = _tiny_problem()
    guards.backward(model(torch.ones(1, 3)).sum())
    assert torch.equal(model.bias.grad, torch.full((2,), guards.scaler.get_scale()))


def test_the_guard_state_round_trips_and_amp_stays_off_once_turned_off() -> None:
    guards = _fp16_guards()
    guards.scaler.scale(torch.tensor(1.0))  # the scale exists from the first scaled loss on
    guards.scaler.update(1024.0)
    guards.state.totals["steps"] = 9
    saved, scaler = guards.state_dict(), guards.scaler.state_dict()
    assert saved == {"amp_on": True, "lr_factor": 1.0, "streak": 0, "escalations": [],
                     "totals": {**dict.fromkeys(("steps", "skipped", "nonfinite_loss", "nonfinite_grad",
                                                 "data_errors", "empty_batches"), 0), "steps": 9}}
    back = _fp16_guards()
    back.state.streak = 5
    back.load_state_dict({**saved, "streak": 1}, scaler)
    assert back.state.amp_on and back.scaler.is_enabled() and back.scaler.get_scale() == 1024.0
    assert back.state.streak == 1 and back.state.totals["steps"] == 9
    off = _fp16_guards()
    off.load_state_dict({**saved, "amp_on": False}, scaler)
    assert not off.state.amp_on and not off.scaler.is_enabled()  # turned off by the guards: stays off
    back.state.amp_on = False
    back.load_state_dict(saved, scaler)  # AMP switched off now: the saved "on" does not turn it back on
    assert not back.state.amp_on and not back.scaler.is_enabled()
    fresh = _fp16_guards()
    fresh.load_state_dict(saved, None)  # a checkpoint without a scaler state: the scaler starts afresh
    assert fresh.scaler.is_enabled() and fresh.scaler.get_scale() == 65536.0


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_on_cuda_every_scaler_the_guards_make_is_cudas() -> None:
    from sustain.config import GuardConfig
    from sustain.device import plan_precision

    fp16 = plan_precision("cuda", "on", bf16_supported=False)
    guards = Guards(GuardConfig(escalate_after=1), "cuda", fp16, amp_on=True)  # disabled here: no CUDA
    assert guards.scaler._device == "cuda"
    guards.on_nonfinite(1, 1, "loss")
    assert guards.scaler._device == "cuda"
    guards.load_state_dict(guards.state_dict(), None)
    assert guards.scaler._device == "cuda"


def test_the_scaler_is_enabled_only_for_fp16_with_amp_on() -> None:
    from sustain.device import plan_precision
    from sustain.training.guards import make_scaler

    fp16, bf16 = plan_precision("cuda", "on", False), plan_precision("cuda", "on", True)
    assert make_scaler("cpu", fp16, amp_on=True).is_enabled()
    assert not make_scaler("cpu", fp16, amp_on=False).is_enabled()
    assert not make_scaler("cpu", bf16, amp_on=True).is_enabled()
    assert make_scaler("xla", fp16, amp_on=True)._device == "cpu"  # a device without a GradScaler: the CPU's
    assert make_scaler("mps", fp16, amp_on=False)._device == "mps"
    assert make_scaler("cuda", fp16, amp_on=False)._device == "cuda"
