"""The search-space file: one spec for local studies (`imgcls tune`) and SageMaker tuning jobs (`imgcls aws tune`).

API (stable; the AWS side builds its requests from it):

    spec = load_spec(path)            # or parse_spec(mapping, source=...); raises SpecError(field, message)
    spec.objective_metric             # one of imgcls.metrics.METRIC_NAMES, e.g. "best_valid_loss"
    spec.direction                    # "minimize" | "maximize"  (SageMaker: "Minimize" | "Maximize")
    spec.parameters                   # {name: Parameter}; names are imgcls hyperparameter names ("batch-size")
    Parameter.type                    # "continuous" | "integer" | "categorical"
    Parameter.min / .max / .values    # numbers for ranges; list of values for categorical
    Parameter.scale                   # "linear" | "log"  (SageMaker ScalingType: Parameter.sagemaker_scaling)
    spec.static                       # {name: value} fixed hyperparameters, as written (not strings)
    spec.fixed_hyperparameters()      # static plus what the strategy implies (Hyperband: early-stopping-patience 0)
    spec.strategy                     # "Bayesian" | "Random" | "Hyperband" | "Grid"
    spec.early_stopping               # "Off" | "Auto"  (SageMaker TrainingJobEarlyStoppingType)
    spec.max_trials / .max_parallel / .max_runtime_s / .seed
    spec.grid_size()                  # number of combinations (Grid)
    spec.replace(max_trials=..., ...) # a validated copy with budget overrides from the command line

Metric definitions come from imgcls.metrics.METRIC_DEFINITIONS (all of them are sent; the objective is one).
Everything SageMaker would reject later is checked here, before anything starts. Importing this
module does not import torch.

File format (YAML):

    objective: {metric: best_valid_loss, direction: minimize}
    parameters:
      lr: {type: continuous, min: 0.0001, max: 0.1, scale: log}
      batch-size: {type: categorical, values: [16, 32, 64, 128, 256]}
    static: {epochs: 4, backbone: resnet50}
    strategy: Bayesian            # Bayesian | Random | Hyperband | Grid
    early_stopping: Off           # Off | Auto
    budget: {max_trials: 20, max_parallel: 2, max_runtime_s: 86400}
    seed: 7                       # optional: sampler seed (SageMaker RandomSeed)
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from imgcls.errors import UserError
from imgcls.hyperparams import ALIASES, FIELDS, hp_name, parse_hyperparameters
from imgcls.metrics import EPOCH_METRICS, METRIC_NAMES, brief, brief_text

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
EARLY_STOPPING = ("Off", "Auto")
TYPES = ("continuous", "integer", "categorical")
SCALES = ("linear", "log")
SAGEMAKER_SCALING = {"linear": "Linear", "log": "Logarithmic"}

# SageMaker limits (service model and AMT limits page).
MAX_RANGES = 30                 # tunable hyperparameters in one tuning job
MAX_CATEGORICAL_VALUES = 30
MAX_NAME_LENGTH = 256           # ParameterKey / hyperparameter name
MAX_CATEGORICAL_VALUE_LENGTH = 256
MAX_HYPERPARAMETER_VALUE_LENGTH = 2500
MAX_HYPERPARAMETERS = 100       # static + tunable, including the _tuning_objective_metric AMT adds
MAX_TRIALS = {"Random": 10_000}  # others: 750
MAX_PARALLEL = 100
RUNTIME_RANGE = (120, 15_768_000)
DEFAULT_SPEC = "default.yaml"
MAX_SPEC_BYTES = 1 << 20        # a spec at all of SageMaker's limits is a few hundred KB
PATH_SHOWN = 200                # characters of a spec's path in a message


class SpecError(UserError):
    """A spec that cannot run; `field` is the dotted path of the culprit, e.g. parameters.lr.min."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"spec {field}: {message}")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    min: float | int | None = None
    max: float | int | None = None
    values: tuple = ()
    scale: str = "linear"

    @property
    def sagemaker_scaling(self) -> str:
        return SAGEMAKER_SCALING[self.scale]


@dataclass(frozen=True)
class TuningSpec:
    objective_metric: str
    direction: str
    parameters: dict[str, Parameter]
    static: dict[str, Any] = field(default_factory=dict)
    strategy: str = "Bayesian"
    early_stopping: str = "Off"
    max_trials: int = 20
    max_parallel: int = 1
    max_runtime_s: int | None = None
    seed: int | None = None
    source: str = "<spec>"

    def fixed_hyperparameters(self) -> dict[str, Any]:
        """Static hyperparameters every trial gets; Hyperband owns stopping, so training's own is off."""
        fixed = dict(self.static)
        if self.strategy == "Hyperband":
            fixed["early-stopping-patience"] = 0
        return fixed

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.parameters.values()) if self.parameters else 0

    def replace(self, **changes) -> "TuningSpec":
        """A copy with changed fields (e.g. budget overrides), validated like a loaded spec."""
        updated = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        _check_spec(updated)
        return updated


def default_spec_path() -> Path:
    return Path(str(resources.files("imgcls_client") / "specs" / DEFAULT_SPEC))


def load_spec(path: str | Path | None = None) -> TuningSpec:
    """Read and validate a YAML spec (the packaged default when path is None)."""
    import yaml

    path = Path(path) if path is not None else default_spec_path()
    shown = brief_text(str(path), PATH_SHOWN)
    text = _read_spec(path, shown)
    try:
        data = yaml.load(text, Loader=_spec_loader())  # noqa: S506 - a SafeLoader subclass that refuses even more
    except yaml.YAMLError as exc:
        raise SpecError("file", _yaml_problem(exc, shown)) from None
    except RecursionError:
        raise SpecError("file", f"{shown}: nested too deeply to be a spec") from None
    return parse_spec(data, source=str(path))


def _read_spec(path: Path, shown: str) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)  # never to the end of /dev/zero
    except OSError as exc:
        raise SpecError("file", f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError("file", f"{shown} is larger than 1 MiB; a spec is a few lines of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("file", f"{shown} is not UTF-8 text (byte {exc.start})") from None


def _yaml_problem(exc, shown: str) -> str:
    """`PATH line N: problem`, one bounded line; PyYAML's own text adds a snippet of the file on more lines."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{shown} line {mark.line + 1}" if mark is not None else shown
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    prefix = "" if getattr(exc, "refused", False) else "not valid YAML: "
    return f"{where}: {prefix}{brief_text(problem, 200)}"


@functools.cache
def _spec_loader():
    """yaml.SafeLoader that also refuses what a spec never needs.

    Anchors and aliases: a few lines of them (a "billion laughs") share one list 9^9 times; loading
    is instant, but anything that prints or walks the value expands it to gigabytes. Duplicate keys:
    the last would silently win. Other tags than plain YAML's (!!python/object...) are refused too.
    """
    import yaml
    from yaml.constructor import ConstructorError

    class Refused(ConstructorError):
        refused = True

    class SpecLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise Refused(problem="YAML anchors and aliases (&name, *name) are not allowed in a spec; write the value out",
                              problem_mark=event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            firsts = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise Refused(problem="merge keys (<<) are not allowed in a spec", problem_mark=key_node.start_mark)
                key = self.construct_object(key_node)
                try:
                    first = firsts.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error names it
                    continue
                if first is not key_node:
                    raise Refused(problem=f"key {brief_text(str(key))} appears twice in one mapping (first on line {first.start_mark.line + 1})",
                                  problem_mark=key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except ValueError as exc:  # int() past 4300 digits, a date like 2024-13-45
                raise Refused(problem=f"cannot read this value ({exc})", problem_mark=node.start_mark) from None

        def refuse_tag(self, node):
            raise Refused(problem=f"the tag {brief(node.tag)} is not allowed in a spec", problem_mark=node.start_mark)

    SpecLoader.add_constructor(None, SpecLoader.refuse_tag)
    return SpecLoader


# ---------------------------------------------------------------- parsing

_TOP_KEYS = ("objective", "parameters", "static", "strategy", "early_stopping", "budget", "seed")
_BUDGET_KEYS = ("max_trials", "max_parallel", "max_runtime_s")


def _at(where: str, key) -> str:
    """The dotted field path of a key the user wrote, bounded: a key can be a megabyte long."""
    text = brief_text(key) if isinstance(key, str) else brief(key)
    return f"{where}.{text}" if where else text


def _mapping(value, where: str, allowed: tuple[str, ...] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {type(value).__name__} {brief(value)}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise SpecError(_at(where, key), f"unknown key; expected one of {', '.join(allowed)}")
    return dict(value)


def _int(value, where: str, low: int, high: int | None = None) -> int:
    # is_integer() is False for inf and nan, which int() would turn into an OverflowError or ValueError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise SpecError(where, f"expected an integer, got {brief(value)}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise SpecError(where, f"{brief(value)} is out of range [{low}, {high if high is not None else 'inf'}]")
    return value


def _number(value, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise SpecError(where, f"expected a finite number, got {brief(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(where, f"expected a finite number, got {brief(value)}")
    return value


def _choice(value, where: str, choices: tuple[str, ...]) -> str:
    # YAML 1.1 reads a bare Off as false; that is what the user wrote.
    if value is False:
        value = "Off"
    if isinstance(value, str):
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
    raise SpecError(where, f"{brief(value)} is not one of {', '.join(choices)}")


def _one_value(value, where: str) -> None:
    """A hyperparameter takes one value: never a list or mapping (which could also be huge to print)."""
    if isinstance(value, (list, dict, set, tuple)) or value is None:
        raise SpecError(where, f"expected one value, got {brief(value)}")


def _hp_key(name, where: str) -> str:
    """Canonical imgcls hyperparameter name ('batch_size' -> 'batch-size'), or a SpecError."""
    if not isinstance(name, str) or not name:
        raise SpecError(where, f"a hyperparameter name must be text, got {brief(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(where, f"name is {len(name)} characters; SageMaker allows {MAX_NAME_LENGTH}")
    key = ALIASES.get(name, name).replace("-", "_")
    if key not in FIELDS:
        import difflib
        close = difflib.get_close_matches(hp_name(key), [hp_name(n) for n in FIELDS], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SpecError(where, f"unknown hyperparameter {brief(name)}{hint} (see `imgcls train --help`)")
    return hp_name(key)


def _check_value(name: str, value, where: str) -> None:
    """The value must be one imgcls train accepts for this hyperparameter."""
    try:
        parse_hyperparameters({name: value})
    except UserError as exc:
        raise SpecError(where, str(exc).removeprefix(f"hyperparameter {name}: ")) from None


def _yaml_value(name: str, value, where: str):
    """YAML 1.1 reads bare off/on/no/yes as booleans; give a text hyperparameter back the word."""
    f = FIELDS[name.replace("-", "_")]
    choices = f.metadata["choices"] or ()
    if isinstance(value, bool) and (f.metadata["kind"] or type(f.default)) is str:
        word = {False: "off", True: "on"}[value]
        if word in choices:
            return word
        raise SpecError(where, f"YAML read {value!r} as a boolean; quote the value")
    return value


def _hp_kind(name: str):
    f = FIELDS[name.replace("-", "_")]
    kind = f.metadata["kind"] or type(f.default)
    return kind


def _hp_range(name: str) -> tuple:
    meta = FIELDS[name.replace("-", "_")].metadata
    return meta["low"], meta["high"]


def _parameter(name: str, raw, where: str) -> Parameter:
    raw = _mapping(raw, where, ("type", "min", "max", "values", "scale"))
    if "type" not in raw:
        raise SpecError(f"{where}.type", f"missing; one of {', '.join(TYPES)}")
    kind = _choice(raw["type"], f"{where}.type", TYPES)
    if kind == "categorical":
        for key in ("min", "max", "scale"):
            if key in raw:
                raise SpecError(f"{where}.{key}", "not used by a categorical parameter; list its values")
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}.values", "a categorical parameter needs a non-empty list of values")
        if len(values) > MAX_CATEGORICAL_VALUES:
            raise SpecError(f"{where}.values", f"{len(values)} values; SageMaker allows {MAX_CATEGORICAL_VALUES}")
        for i, value in enumerate(values):
            _one_value(value, f"{where}.values[{i}]")
        values = [_yaml_value(name, v, f"{where}.values[{i}]") for i, v in enumerate(values)]
        texts = [_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise SpecError(f"{where}.values", "values repeat")
        for i, value in enumerate(values):
            if len(texts[i]) > MAX_CATEGORICAL_VALUE_LENGTH:
                raise SpecError(f"{where}.values[{i}]", f"longer than {MAX_CATEGORICAL_VALUE_LENGTH} characters")
            _check_value(name, value, f"{where}.values[{i}]")
        return Parameter(name, kind, values=tuple(values))
    if "values" in raw:
        raise SpecError(f"{where}.values", f"only categorical parameters list values; {kind} takes min and max")
    hp_kind = _hp_kind(name)
    if hp_kind not in (int, float):
        raise SpecError(f"{where}.type", f"{name} is not numeric; make it categorical")
    if hp_kind is int and kind == "continuous":
        raise SpecError(f"{where}.type", f"{name} is an integer hyperparameter; use type integer")
    bounds = {}
    for key in ("min", "max"):
        if key not in raw:
            raise SpecError(f"{where}.{key}", f"missing; a {kind} parameter needs min and max")
        bounds[key] = _int(raw[key], f"{where}.{key}", *_hp_range(name)) if kind == "integer" else _number(raw[key], f"{where}.{key}")
        _check_value(name, bounds[key], f"{where}.{key}")
    if not bounds["min"] < bounds["max"]:
        raise SpecError(f"{where}.max", f"must be larger than min ({bounds['min']}), got {bounds['max']}")
    scale = _choice(raw.get("scale", "linear"), f"{where}.scale", SCALES)
    if scale == "log" and bounds["min"] <= 0:
        raise SpecError(f"{where}.min", f"log scaling needs min > 0, got {bounds['min']}")
    return Parameter(name, kind, min=bounds["min"], max=bounds["max"], scale=scale)


def _text(value) -> str:
    """How a value travels as a SageMaker hyperparameter (a string)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_spec(data, source: str = "<spec>") -> TuningSpec:
    data = _mapping(data, "", _TOP_KEYS)
    if not data:
        raise SpecError("file", f"{source} is empty; see the default spec {default_spec_path()}")
    objective = _mapping(data.get("objective"), "objective", ("metric", "direction"))
    strategy = _choice(data.get("strategy", "Bayesian"), "strategy", STRATEGIES)
    early_stopping = _choice(data.get("early_stopping", "Off"), "early_stopping", EARLY_STOPPING)
    per_epoch = strategy == "Hyperband" or early_stopping == "Auto"
    metric = objective.get("metric", "valid_loss" if per_epoch else "best_valid_loss")
    if metric not in METRIC_NAMES:
        raise SpecError("objective.metric", f"{brief(metric)} is not a metric imgcls prints; one of {', '.join(METRIC_NAMES)}")
    natural = "maximize" if metric.endswith("accuracy") else "minimize"
    direction = _choice(objective.get("direction", natural), "objective.direction", ("minimize", "maximize"))
    if metric != "epoch_seconds" and direction != natural:
        raise SpecError("objective.direction", f"{metric} should be {natural}d, not {direction}d")

    raw_params = _mapping(data.get("parameters"), "parameters")
    if not raw_params:
        raise SpecError("parameters", "no parameters to tune")
    if len(raw_params) > MAX_RANGES:
        raise SpecError("parameters", f"{len(raw_params)} tunable hyperparameters; SageMaker allows {MAX_RANGES}")
    parameters: dict[str, Parameter] = {}
    for raw_name, raw in raw_params.items():
        where = _at("parameters", raw_name)
        name = _hp_key(raw_name, where)
        if name in parameters:
            raise SpecError(where, f"same hyperparameter as {name}")
        parameters[name] = _parameter(name, raw, where)

    static: dict[str, Any] = {}
    for raw_name, value in _mapping(data.get("static"), "static").items():
        where = _at("static", raw_name)
        name = _hp_key(raw_name, where)
        if name in parameters:
            raise SpecError(where, "is also a tuned parameter; keep it in one place")
        if name in static:
            raise SpecError(where, f"same hyperparameter as {name}")
        _one_value(value, where)
        value = _yaml_value(name, value, where)
        if isinstance(value, str) and len(value) > MAX_HYPERPARAMETER_VALUE_LENGTH:  # numbers are short once in range
            raise SpecError(where, f"longer than {MAX_HYPERPARAMETER_VALUE_LENGTH} characters")
        _check_value(name, value, where)
        static[name] = value

    budget = _mapping(data.get("budget"), "budget", _BUDGET_KEYS)
    spec = TuningSpec(
        objective_metric=metric, direction=direction, parameters=parameters, static=static,
        strategy=strategy, early_stopping=early_stopping,
        max_trials=budget.get("max_trials", 20), max_parallel=budget.get("max_parallel", 1),
        max_runtime_s=budget.get("max_runtime_s"), seed=data.get("seed"), source=source)
    if strategy == "Grid" and "max_trials" not in budget:
        spec = dataclasses.replace(spec, max_trials=spec.grid_size() if all(p.type == "categorical" for p in parameters.values()) else 1)
    _check_spec(spec)
    return spec


def _check_spec(spec: TuningSpec) -> None:
    """Rules across fields (also re-checked after command-line overrides)."""
    high = MAX_TRIALS.get(spec.strategy, 750)
    _int(spec.max_trials, "budget.max_trials", 1, high)
    _int(spec.max_parallel, "budget.max_parallel", 1, MAX_PARALLEL)
    if spec.max_runtime_s is not None:
        _int(spec.max_runtime_s, "budget.max_runtime_s", *RUNTIME_RANGE)
    if spec.seed is not None:
        _int(spec.seed, "seed", 0, 2**31 - 1)
    if 1 + len(spec.parameters) + len(spec.static) > MAX_HYPERPARAMETERS:
        raise SpecError("static", f"static + tunable hyperparameters (+1 the tuner adds) exceed SageMaker's {MAX_HYPERPARAMETERS}")
    if spec.strategy == "Grid":
        ranged = [p.name for p in spec.parameters.values() if p.type != "categorical"]
        if ranged:
            raise SpecError(f"parameters.{ranged[0]}", "Grid search takes categorical parameters only; list the values to try")
        if spec.max_trials != spec.grid_size():
            raise SpecError("budget.max_trials", f"Grid runs every combination: {spec.grid_size()}, not {spec.max_trials} (leave it out)")
    if spec.strategy == "Hyperband":
        if "epochs" in spec.parameters:
            raise SpecError("parameters.epochs", "Hyperband decides how many epochs a trial gets; make epochs static")
        if "epochs" not in spec.static:
            raise SpecError("static.epochs", "Hyperband needs a static epochs (its largest resource per trial)")
        if spec.early_stopping != "Off":
            raise SpecError("early_stopping", "must be Off with Hyperband (it stops trials itself)")
        patience = spec.static.get("early-stopping-patience")
        if patience not in (None, 0, "0"):
            raise SpecError("static.early-stopping-patience", "must be 0 or absent with Hyperband: training's own early stopping is off")
    if (spec.strategy == "Hyperband" or spec.early_stopping == "Auto") and spec.objective_metric not in EPOCH_METRICS:
        why = "Hyperband" if spec.strategy == "Hyperband" else "early_stopping Auto"
        raise SpecError("objective.metric", f"{why} stops trials from a per-epoch objective; {spec.objective_metric} is printed once "
                                            f"at the end. Use one of {', '.join(m for m in EPOCH_METRICS if m != 'epoch_seconds')}")


def as_hyperparameter_text(values: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker sends them (strings; booleans lower-case)."""
    return {k: _text(v) for k, v in values.items()}


def grid_points(spec: TuningSpec) -> list[dict[str, Any]]:
    """Every combination of a Grid spec, in a fixed order."""
    names = list(spec.parameters)
    return [dict(zip(names, combo)) for combo in itertools.product(*(spec.parameters[n].values for n in names))]
