"""Hyperparameters: one table of names, types, defaults and ranges, shared by the CLI, SageMaker and the tuner.

Names are stable: users' scripts and tuning jobs depend on them. The same name is a CLI flag
(`--batch-size`) and a SageMaker hyperparameter (`batch-size`); `batch_size` is accepted too.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UserError
from .metrics import brief, brief_text
from .names import BACKBONE_NAMES, is_rule_param

MAX_TEXT_LENGTH = 4095   # longest text value: Linux's PATH_MAX less its NUL (SageMaker itself sends at most 2500)
MAX_PATH_COMPONENT = 255  # bytes in one file or folder name (NAME_MAX): a longer one fails every file call
PATH_FIELDS = ("weights", "checkpoint_dir")  # values that name a file or folder (weights: unless imagenet or none)


def _hp(default, help: str, *, low=None, high=None, choices=None, kind=None):
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices, "kind": kind})


@dataclass(frozen=True)
class HyperParameters:
    epochs: int = _hp(10, "passes over the training set", low=1, high=1000)
    batch_size: int = _hp(32, "images per step on each device", low=1, high=4096)
    lr: float = _hp(1e-3, "peak learning rate of the backbone", low=1e-7, high=10.0)
    head_lr: float | None = _hp(None, "peak learning rate of the new classifier head (default: 10 x lr with pretrained weights, lr from scratch)", low=1e-7, high=10.0, kind=float)
    optimizer: str = _hp("adamw", "optimizer", choices=("adamw", "sgd"))
    momentum: float = _hp(0.9, "SGD momentum", low=0.0, high=0.999)
    weight_decay: float = _hp(0.05, "decoupled weight decay (not applied to norms and biases)", low=0.0, high=1.0)
    scheduler: str = _hp("cosine", "learning-rate schedule after warmup", choices=("cosine", "onecycle", "constant"))
    warmup_epochs: float = _hp(1.0, "linear warmup length in epochs", low=0.0, high=100.0)
    label_smoothing: float = _hp(0.1, "label smoothing of the cross-entropy loss", low=0.0, high=0.5)
    early_stopping_patience: int = _hp(5, "stop after this many epochs without a better validation loss (0: off)", low=0, high=1000)
    backbone: str = _hp("resnet50", "network architecture", choices=BACKBONE_NAMES)
    weights: str = _hp("imagenet", "initial weights: imagenet, none, or a path to a .pth state_dict", kind="weights")
    allow_download: bool = _hp(True, "download ImageNet weights when they are neither in a channel nor baked into the image")
    finetune: str = _hp("all", "what to train: head, all, or N (the head plus the last N backbone stages)", kind="finetune")
    crop_scale: float = _hp(0.25, "smallest area share of a random training crop (1: no random crops)", low=0.05, high=1.0)
    hflip: bool = _hp(True, "random horizontal flips (turn off for text or digits)")
    image_size: int = _hp(224, "square input side in pixels", low=32, high=1024)
    valid_fraction: float = _hp(0.1, "share of train carved out (stratified) when no validation split is given", low=0.01, high=0.5)
    amp: str = _hp("auto", "mixed precision: auto (bf16 where supported, else fp16 on GPU), bf16, fp16 or off", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = _hp(True, "channels_last memory format (with AMP)")
    workers: int | None = _hp(None, "DataLoader worker processes per device (default: on GPU the CPUs shared out, on CPU 0 up to 4 cores)", low=0, high=128, kind=int)
    seed: int = _hp(42, "random seed for weights, split, order and augmentation", low=0, high=2**31 - 1)
    deterministic: bool = _hp(False, "deterministic kernels (slower); results then repeat bit for bit")
    checkpoint_dir: str | None = _hp(None, "where to checkpoint every epoch and on SIGTERM (default: /opt/ml/checkpoints)", kind=str)
    checkpoints: bool = _hp(True, "save a resumable checkpoint every epoch and on SIGTERM (off: for runs never resumed, such as local tuning trials)")
    log_interval: int = _hp(20, "steps between progress lines in logs", low=1, high=100000)
    max_steps_per_epoch: int = _hp(0, "cap on steps per epoch, for smoke tests and profiling (0: no cap)", low=0, high=10**9)
    insights: bool = _hp(True, "collect training insights (step timing, gradients, system) and write report.html; rules evaluated online")
    insights_report: bool = _hp(True, "draw report.html when training ends (off: rules still run and insights.json is written; `imgcls report DIR` draws the page later)")
    insights_sample_interval: int = _hp(50, "steps between sampled steps (per-layer gradients, weight-update ratios, ReLU activity)", low=1, high=10**6)
    insights_init_steps: int = _hp(10, "first steps observed for poor initialisation (activation variance, gradient percentiles)", low=0, high=10000)
    profiler_steps: int = _hp(3, "steps in the torch.profiler window after warm-up (0: no profiler window)", low=0, high=100)
    # `<RuleName>_<param>` overrides of the insight rules (e.g. StepOutlier_stddev), as given; not a CLI flag of its own
    rule_params: dict = field(default_factory=dict, metadata={"help": "", "low": None, "high": None, "choices": None, "kind": "rules"})

    def as_dict(self) -> dict[str, Any]:
        """Names and values as a user passes them: rule overrides flattened back to `<RuleName>_<param>`."""
        values = {hp_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rule_params"}
        return {**values, **self.rule_params}


# Names users of the earlier notebooks pass.
ALIASES = {"learning_rate": "lr", "learning-rate": "lr", "num_epochs": "epochs", "num-epochs": "epochs"}
FIELDS = {f.name: f for f in dataclasses.fields(HyperParameters) if f.metadata["kind"] != "rules"}


def hp_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def _canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    return name.replace("-", "_")


def _integer(value) -> int | float:
    """An integer from an int, 3.0 or "3"; beyond every range (1e400, 10**400, "inf") it is ±inf, which
    the range check refuses by name. TypeError or ValueError for anything else (True, 2.5, nan, "three")."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    number = float(value)
    if math.isinf(number):
        return number
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _number(value) -> float:
    """A float from a number or its text; an int too large for a float is ±inf (out of range)."""
    if isinstance(value, bool):
        raise TypeError(value)
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_path(shown: str, path: str) -> None:
    """A path every file call can take; otherwise its first use fails with an error that names no hyperparameter."""
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON's "\\ud800"
        raise UserError(f"hyperparameter {shown}: the path has characters no file name can hold") from None
    if b"\0" in encoded:
        raise UserError(f"hyperparameter {shown}: a path cannot contain a NUL character")
    if len(encoded) > MAX_TEXT_LENGTH:
        raise UserError(f"hyperparameter {shown}: the path is {len(encoded)} bytes; at most {MAX_TEXT_LENGTH}")
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > MAX_PATH_COMPONENT:
        raise UserError(f"hyperparameter {shown}: a path component is {longest} bytes; at most {MAX_PATH_COMPONENT}")


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    kind = meta["kind"] or type(f.default)
    shown = hp_name(name)
    if isinstance(value, (list, tuple, dict, set)):  # JSON in SM_HPS, or a spec value: one value per hyperparameter
        raise UserError(f"hyperparameter {shown}: expected one value, got {brief(value)}")
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        raise UserError(f"hyperparameter {shown}: {len(value)} characters; at most {MAX_TEXT_LENGTH}")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "auto") and f.default is None):
        return None
    if kind == "weights":
        value = str(value).strip()
        if value.lower() in ("imagenet", "none"):
            return value.lower()
    if kind == "finetune":
        value = str(value).strip().lower()
        if value in ("head", "all") or (value.isascii() and value.isdigit()):  # isdigit alone takes "²", which int() refuses
            return value
        raise UserError(f"hyperparameter {shown}: expected head, all or a number of stages, got {brief(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UserError(f"hyperparameter {shown}: expected true or false, got {brief(value)}")
    try:
        if kind is int:
            value = _integer(value)
        elif kind is float:
            value = _number(value)
        else:
            value = str(value).strip()
    except (TypeError, ValueError):
        raise UserError(f"hyperparameter {shown}: expected {'an integer' if kind is int else 'a number'}, got {brief(value)}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise UserError(f"hyperparameter {shown}: {brief(value)} is not one of {', '.join(meta['choices'])}")
    if meta["low"] is not None and not (meta["low"] <= value <= meta["high"]):
        raise UserError(f"hyperparameter {shown}: {brief(value)} is out of range [{meta['low']}, {meta['high']}]")
    if name in PATH_FIELDS:
        _check_path(shown, value)
    return value


def parse_hyperparameters(raw: Mapping[str, Any]) -> HyperParameters:
    """Validate raw values (strings from hyperparameters.json, JSON values from SM_HPS, or CLI text)."""
    values, rule_overrides = {}, {}
    for name, value in raw.items():
        if name.startswith(("sagemaker_", "_")):  # set by SageMaker and the tuner, not ours
            continue
        if is_rule_param(name):  # `StepOutlier_stddev`: an insight rule's parameter
            rule_overrides[name] = value
            continue
        key = _canonical(name)
        if key not in FIELDS:
            known = [hp_name(n) for n in FIELDS]
            close = difflib.get_close_matches(hp_name(key), known, n=1) if len(key) <= 100 else []
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"hyperparameter {brief_text(str(name))}: unknown name; {hint}known names are {', '.join(known)}")
        values[key] = _coerce(key, FIELDS[key], value)
    if rule_overrides:
        from .insights.rules import validate_rule_params  # numpy: only for jobs that override a rule
        params = validate_rule_params(rule_overrides)
        values["rule_params"] = {k: params[k.partition("_")[0]][k.partition("_")[2]] for k in rule_overrides}
    return HyperParameters(**values)


def describe() -> list[tuple[str, str, str, str]]:
    """(name, default, range or choices, help) rows for the CLI help and the README."""
    rows = []
    for f in FIELDS.values():
        m = f.metadata
        if m["choices"]:
            rng = ", ".join(m["choices"])
        elif m["low"] is not None:
            rng = f"[{m['low']}, {m['high']}]"
        else:
            rng = ""
        rows.append((hp_name(f.name), "" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else str(f.default), rng, m["help"]))
    return rows
