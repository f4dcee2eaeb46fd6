"""Backbones, pretrained-weight resolution and fine-tune policies."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
import torchvision
from torchvision import models as tvm

from .errors import UserError
from .metrics import printable

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    builder: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum
    head_attr: str  # dotted path to the final Linear layer

    def stages(self, model: nn.Module) -> list[nn.Module]:
        """Feature stages in input-to-output order (the head excluded)."""
        if hasattr(model, "layer4"):  # ResNet family
            stem = nn.ModuleList([model.conv1, model.bn1])
            return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
        return list(model.features)  # EfficientNet / ConvNeXt


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc"),
    "resnet34": Backbone(tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc"),
    "resnet50": Backbone(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc"),
    "resnet101": Backbone(tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V2, "fc"),
    "resnet152": Backbone(tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V2, "fc"),
    "efficientnet_b0": Backbone(tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier.1"),
    "convnext_tiny": Backbone(tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2"),
}


def _get_submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *parents, leaf = dotted.split(".")
    owner = model
    for name in parents:
        owner = getattr(owner, name) if not name.isdigit() else owner[int(name)]
    return owner, leaf


def build_model(backbone: str, num_classes: int) -> nn.Module:
    """The architecture with a fresh `num_classes` head and no weights loaded."""
    if backbone not in BACKBONES:
        raise UserError(f"hyperparameter backbone: unknown value {backbone!r}; choose one of {', '.join(BACKBONES)}")
    model = BACKBONES[backbone].builder(weights=None)
    owner, leaf = _get_submodule_parent(model, BACKBONES[backbone].head_attr)
    new_head = nn.Linear(_head_module(model, backbone).in_features, num_classes)
    if leaf.isdigit():
        owner[int(leaf)] = new_head
    else:
        setattr(owner, leaf, new_head)
    return model


def torchvision_cache_file(backbone: str) -> Path:
    """Where torchvision keeps the downloaded ImageNet weights (baked into the image at build time)."""
    url = BACKBONES[backbone].weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def resolve_pretrained(backbone: str, weights: str, pretrained_dir: str | None, allow_download: bool) -> Path | None:
    """Pick the pretrained weights file, in order: channel/explicit file, baked cache, download, none."""
    if weights == "none":
        return None
    if weights not in ("imagenet",):
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"hyperparameter weights: file {weights} does not exist")
        return path
    if pretrained_dir:
        files = sorted(p for p in Path(pretrained_dir).rglob("*") if p.suffix in (".pt", ".pth", ".bin") and p.is_file())
        if not files:
            raise UserError(f"channel pretrained: no .pt/.pth file found in {pretrained_dir}")
        return files[0]
    cached = torchvision_cache_file(backbone)
    if cached.is_file():
        return cached
    if allow_download:
        try:
            BACKBONES[backbone].weights.get_state_dict(progress=False, check_hash=True)
            return cached
        except Exception as exc:  # network isolation, DNS, proxy...
            log.warning("download of %s weights failed: %s", backbone, exc)
    raise UserError(
        f"no pretrained weights for {backbone}: {cached.name} is not baked into the image and cannot be "
        "downloaded; provide it as a 'pretrained' input channel, pass weights=/path/file.pth, "
        "or set weights=none to train from scratch"
    )


def load_pretrained(model: nn.Module, backbone: str, path: Path) -> int:
    """Load backbone weights (the classifier head is skipped when its shape differs). Returns tensors loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"weights file {printable(path.name)}: cannot be loaded safely ({type(exc).__name__}: {printable(exc)})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"weights file {printable(path.name)}: expected a state_dict, got {type(state).__name__}")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k in usable for k in own if not k.startswith(BACKBONES[backbone].head_attr.split(".")[0])):
        raise UserError(f"weights file {printable(path.name)}: no tensor matches the {backbone} architecture")
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d/%d tensors from %s", len(usable), len(own), printable(path.name))
    return len(usable)


def apply_finetune_policy(model: nn.Module, backbone: str, trainable_stages: int) -> None:
    """Freeze everything but the head and the last `trainable_stages` stages (-1 means train all)."""
    if trainable_stages < 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    stages = BACKBONES[backbone].stages(model)
    if trainable_stages > len(stages):
        raise UserError(f"hyperparameter finetune: {backbone} has {len(stages)} stages; "
                        f"use head, all or 0-{len(stages)}, not {trainable_stages}")
    for p in model.parameters():
        p.requires_grad_(False)
    for stage in stages[len(stages) - trainable_stages:] if trainable_stages else []:
        for p in stage.parameters():
            p.requires_grad_(True)
    head = _head_module(model, backbone)
    for p in head.parameters():
        p.requires_grad_(True)


def _head_module(model: nn.Module, backbone: str) -> nn.Module:
    owner, leaf = _get_submodule_parent(model, BACKBONES[backbone].head_attr)
    return owner[int(leaf)] if leaf.isdigit() else getattr(owner, leaf)


def param_groups(model: nn.Module, backbone: str, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Separate learning rates for head and body; no weight decay on norms and biases."""
    head_ids = {id(p) for p in _head_module(model, backbone).parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in head_ids, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_head, no_decay), params in groups.items():
        out.append({
            "params": params,
            "lr": head_lr if is_head else lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": ("head" if is_head else "body") + ("_nodecay" if no_decay else ""),
        })
    return out
