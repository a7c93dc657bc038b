"""The model factory: the three `pretrained` forms, img_size, head re-init, grad checkpointing (SPEC §5)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sustain.config import ModelConfig
from sustain.errors import UsageError
from sustain.model import (
    MPS_GRAD_CKPT_WARNING,
    build_model,
    hub_reachable,
    parameter_summary,
    read_weights_file,
)


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"name": "test_vit", "pretrained": False, "input_size": 32, "drop_path_rate": 0.0, **kw})


def test_random_init_builds_the_classifier_for_the_taxonomy() -> None:
    model = build_model(cfg(), num_classes=7)
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_img_size_is_passed_when_the_architecture_takes_it() -> None:
    vit = build_model(cfg(input_size=48), num_classes=3)
    assert tuple(vit.patch_embed.img_size) == (48, 48)
    assert vit(torch.zeros(1, 3, 48, 48)).shape == (1, 3)
    resnet = build_model(cfg(name="test_resnet", input_size=48), num_classes=3)  # no img_size argument
    assert resnet(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_parameter_summary_line() -> None:
    model = build_model(cfg(), num_classes=5)
    total = sum(p.numel() for p in model.parameters())
    model.head.weight.requires_grad_(False)
    trainable = total - model.head.weight.numel()
    assert parameter_summary(model) == (f"Model parameters: {total / 1e6:.2f}M total, "
                                        f"{trainable / 1e6:.2f}M trainable")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_weights_load_and_a_head_of_another_size_is_reinitialised(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = build_model(cfg(), num_classes=10)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DDP-style wrapper

    model = build_model(cfg(pretrained=str(path)), num_classes=4)
    assert model.head.weight.shape == (4, 64)
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, state[name]), name


def test_local_weights_with_the_same_head_keep_it(tmp_path: Path) -> None:
    source = build_model(cfg(), num_classes=4)
    path = tmp_path / "same.pth"
    torch.save(source.state_dict(), path)
    model = build_model(cfg(pretrained=str(path)), num_classes=4)
    assert torch.equal(model.head.weight, source.head.weight)


def test_weights_of_another_architecture_are_refused_with_the_file_named(tmp_path: Path) -> None:
    other = build_model(cfg(name="test_resnet"), num_classes=4)
    path = tmp_path / "resnet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(UsageError) as err:
        build_model(cfg(pretrained=str(path)), num_classes=4)
    assert str(path) in str(err.value)


def test_missing_or_wrong_type_weights_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        build_model(cfg(pretrained=str(tmp_path / "nope.safetensors")), num_classes=3)
    bad = tmp_path / "weights.txt"
    bad.write_text("x")
    with pytest.raises(UsageError, match="Unsupported weights file type"):
        build_model(cfg(pretrained=str(bad)), num_classes=3)


class _Payload:
    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_weights_file_with_a_pickled_callable_is_refused_and_not_run(tmp_path: Path) -> None:
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(UsageError, match="weights_only"):
        read_weights_file(path)
    assert not _Payload.marker.exists()


def test_hub_offline_names_the_local_file_and_false_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # this sandbox has no network anyway
    with pytest.raises(UsageError) as err:
        build_model(cfg(pretrained=True), num_classes=3)
    text = str(err.value)
    assert "test_vit" in text
    assert "local weights file" in text and "false" in text


def test_unreachable_hub_reads_the_cache_only_instead_of_retrying(monkeypatch: pytest.MonkeyPatch,
                                                                  sustain_log) -> None:
    import huggingface_hub.constants

    # A real connection attempt to a port nothing listens on: refused at once, as with no network.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert not hub_reachable("http://127.0.0.1:9")
    with pytest.raises(UsageError, match="local weights file"):
        build_model(cfg(pretrained=True), num_classes=3)
    # Cache-only mode, rather than the hub client's minute of download retries.
    assert "is unreachable: using the local cache only" in sustain_log.text
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored for the rest of the process


def test_unknown_model_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Unknown timm model 'test_vitt'"):
        build_model(cfg(name="test_vitt"), num_classes=3)


def _block_calls_and_grads(model: torch.nn.Module) -> tuple[int, list[torch.Tensor]]:
    """How often the first block runs in one training step (forward + backward), and the gradients."""
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # the recompute may stop early
    model.train()
    torch.manual_seed(0)
    images = torch.randn(2, 3, *model.patch_embed.img_size)
    torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 2])).backward()
    return len(calls), [p.grad.clone() for p in model.parameters()]


def test_grad_checkpointing_is_opt_in_and_recomputes_activations_in_backward() -> None:
    torch.manual_seed(0)
    off = build_model(cfg(), num_classes=3)
    torch.manual_seed(0)
    on = build_model(cfg(grad_checkpointing=True), num_classes=3, device_type="cpu")
    calls_off, grads_off = _block_calls_and_grads(off)
    calls_on, grads_on = _block_calls_and_grads(on)
    # Without it a block runs once per step; with it, again in backward (its activations were not kept) ...
    assert (calls_off, calls_on) == (1, 2)
    # ... and the gradients are the same.
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_off, grads_on, strict=True))


@pytest.mark.parametrize("requested", [True, False])
def test_grad_checkpointing_is_never_used_on_mps(caplog: pytest.LogCaptureFixture, requested: bool) -> None:
    with caplog.at_level(logging.WARNING, logger="sustain"):
        model = build_model(cfg(grad_checkpointing=requested), num_classes=3, device_type="mps")
    assert not model.grad_checkpointing
    assert MPS_GRAD_CKPT_WARNING in caplog.text
    assert MPS_GRAD_CKPT_WARNING == "⚠️  Gradient checkpointing disabled (incompatible with MPS - causes crashes)"
