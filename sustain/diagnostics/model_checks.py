"""The model checks: the configured model builds, its transforms validate, one training step runs."""

from __future__ import annotations

import copy

from ..device import plan_device
from .accelerator import FORWARD_BATCH, check_device
from .core import CheckResult, DoctorContext, ModelUnavailable, check, failed, passed


def weights_source(pretrained: bool | str) -> str:
    if pretrained is True:
        return "timm hub (pretrained: true; downloaded once, then cached)"
    if pretrained is False:
        return "random initialisation (pretrained: false)"
    return f"local file {pretrained}"


@check("Model availability")
def check_model(ctx: DoctorContext) -> CheckResult:
    mc = ctx.cfg.model
    try:
        model = ctx.model()
    except ModelUnavailable as exc:
        raise exc.cause from None  # build_model's own message and hint (unknown name, missing file, offline)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return passed(f"{mc.name}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
                  f"{ctx.taxonomy.num_classes} classes; weights: {weights_source(mc.pretrained)}",
                  model=mc.name, parameters=total, trainable=trainable, weights=weights_source(mc.pretrained))


@check("Transform pipeline")
def check_transforms(ctx: DoctorContext) -> CheckResult:
    from ..transforms import build_eval_transform, build_train_transform, validate_transforms

    data_cfg = ctx.data_config
    size = ctx.input_size
    validate_transforms(build_train_transform(data_cfg, ctx.cfg.data), build_eval_transform(data_cfg), size)
    mean = ", ".join(f"{m:.3f}" for m in data_cfg["mean"])
    std = ", ".join(f"{s:.3f}" for s in data_cfg["std"])
    return passed(f"train ({ctx.cfg.data.augment}) and eval transforms give float32 [3, {size}, {size}]; "
                  f"mean ({mean}), std ({std}), {data_cfg['interpolation']}",
                  input_size=size, mean=list(data_cfg["mean"]), std=list(data_cfg["std"]),
                  interpolation=data_cfg["interpolation"])


@check("Forward pass")
def check_forward(ctx: DoctorContext) -> CheckResult:
    import torch
    import torch.nn.functional as F

    plan = plan_device(ctx.cfg.device, ctx.backends)
    device = check_device(plan.type)
    cpu_model = ctx.model()
    model = cpu_model if device == "cpu" else copy.deepcopy(cpu_model).to(device)
    classes = ctx.taxonomy.num_classes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(FORWARD_BATCH, 3, ctx.input_size, ctx.input_size, generator=gen).to(device)
    y = torch.randint(0, classes, (FORWARD_BATCH,), generator=gen).to(device)
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        out = model(x)
        shape = tuple(out.shape)
        if shape != (FORWARD_BATCH, classes):
            return failed(f"output shape {list(shape)}, expected [{FORWARD_BATCH}, {classes}]",
                          "the classifier head must have one output per taxonomy class; check model.name "
                          "and taxonomy.classes", shape=list(shape))
        loss = F.cross_entropy(out.float(), y)
        if not torch.isfinite(loss):
            return failed(f"the loss is {loss.item()} on random input",
                          "the model produces non-finite outputs; check the weights file and model settings")
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or not all(torch.isfinite(g).all() for g in grads):
            return failed("backward produced no gradients or non-finite ones",
                          "check that the model's parameters require grad and the weights are finite")
        grad_norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return passed(f"on {device}: output [{FORWARD_BATCH}, {classes}], loss {loss.item():.4f}, backward OK "
                  f"(grad norm {grad_norm:.3g})", device=device, loss=float(loss.item()), grad_norm=grad_norm)
