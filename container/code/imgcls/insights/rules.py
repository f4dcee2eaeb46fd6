"""Debugger and profiler rules, evaluated in-process over the collected records.

Each rule keeps SageMaker's name and documented default parameters, so a verdict here reads like
one from SageMaker Debugger/Profiler, and each parameter can be overridden as the hyperparameter
`<RuleName>_<param>` (ProfilerReport's convention), e.g. `StepOutlier_stddev=4`. Every rule also
takes `<RuleName>_stop` (stop training when it fires); ExplodingTensor stops by default.

Where SageMaker's rule is weak we do better and the rule's description says how (see README):
every step is seen (not one in 500), StepOutlier adds a robust median + k·MAD test and names the
slow part of each outlier, and the input-bound rules read the measured data-wait share of each step
rather than coincidences of core load. No torch here: `imgcls report` must start fast.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from .records import COMPONENT_NAMES, STEP_COMPONENTS, Records

MAX_LISTED_STEPS = 1000  # per finding in insights.json; the count is exact


@dataclass
class Finding:
    rule: str
    triggered: bool
    count: int                      # violations found (steps, epochs, windows or samples: see message)
    datapoints: int                 # how many points the rule looked at
    steps: list[int]                # global steps (or epochs, for epoch rules) where it fired
    message: str                    # one line, what a user reads in CloudWatch
    parameters: dict
    recommendation: str
    description: str
    kind: str                       # "debugger" or "profiler"
    applicable: bool = True         # False: the job has no data this rule needs (e.g. no GPU)
    stop: bool = False              # fired and told to stop training
    details: dict = field(default_factory=dict)

    def log_line(self) -> str:
        state = "TRIGGERED" if self.triggered else "not applicable" if not self.applicable else "ok"
        return f"insights rule={self.rule} {state} count={self.count}: {self.message}"

    def as_dict(self) -> dict:
        return _json_safe(asdict(self))


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    defaults: dict
    description: str
    recommendation: str
    evaluate: Callable[[Records, dict, dict], tuple]


RULES: dict[str, Rule] = {}


def _rule(name: str, kind: str, defaults: dict, description: str, recommendation: str):
    def register(fn):
        RULES[name] = Rule(name, kind, {**defaults, "stop": defaults.get("stop", False)}, description, recommendation, fn)
        return fn
    return register


# --- parameters ------------------------------------------------------------------------------------

def default_params() -> dict[str, dict]:
    return {name: dict(rule.defaults) for name, rule in RULES.items()}


def _coerce(key: str, default: Any, value: Any) -> Any:
    text = str(value).strip()
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"hyperparameter {key}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise UserError(f"hyperparameter {key}: expected a number >= 0, got {value!r}")
        if isinstance(default, int):
            if number != int(number):
                raise UserError(f"hyperparameter {key}: expected an integer, got {value!r}")
            return int(number)
        return number
    return text


def validate_rule_params(raw: dict) -> dict[str, dict]:
    """`{"StepOutlier_stddev": "4", ...}` → every rule's parameters, defaults filled in.

    Raises UserError naming the bad key (with a did-you-mean) or the bad value.
    """
    params = default_params()
    known = [f"{rule}_{p}" for rule, values in params.items() for p in values]
    for key, value in raw.items():
        rule, _, name = str(key).partition("_")
        if rule not in params or name not in params[rule]:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            if not close and rule not in params:
                close = [f"{r}_{name}" for r in difflib.get_close_matches(rule, list(params), n=1)]
            hint = f"did you mean {close[0]}? " if close else ""
            where = f"rule {rule} has {', '.join(params[rule])}" if rule in params else f"rules are {', '.join(params)}"
            raise UserError(f"hyperparameter {key}: unknown rule parameter; {hint}{where}")
        params[rule][name] = _coerce(key, RULES[rule].defaults[name], value)
    return params


# --- helpers ---------------------------------------------------------------------------------------

def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _fmt_steps(steps: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" and {len(steps) - limit} more" if len(steps) > limit else "")


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def warmup_count(n: int) -> int:
    """Steps left out of timing statistics at the start: first batches pay for lazy inits and caches."""
    return min(5, n // 5)


def data_wait_share(rec: Records) -> tuple[float, np.ndarray]:
    """(share of step time spent waiting for the next batch after warm-up, per-step shares)."""
    total, data = rec.column("total"), rec.column("data")
    keep = np.isfinite(total) & np.isfinite(data) & (total > 0)
    keep[:warmup_count(len(total))] = False
    if not keep.any():
        return math.nan, np.array([])
    return float(data[keep].sum() / total[keep].sum()), np.where(keep, data / np.where(total > 0, total, 1), np.nan)


def loop_window(rec: Records) -> tuple[float, float] | None:
    """(start, end) of the training loop in seconds since process start, from the step records."""
    t, total = rec.column("t"), rec.column("total")
    ok = np.isfinite(t)
    if not ok.any():
        return None
    start = float(t[ok][0] - (total[ok][0] if np.isfinite(total[ok][0]) else 0.0))
    return start, float(t[ok][-1])


def loop_samples(rec: Records) -> list[dict]:
    """System samples taken while the training loop ran (all of them when the loop is unknown)."""
    window = loop_window(rec)
    if window is None:
        return rec.system
    return [s for s in rec.system if window[0] <= float(s.get("t", -1)) <= window[1]]


def _gpu_series(samples: list[dict], key: str) -> list[np.ndarray]:
    count = max((len(s.get("gpus") or []) for s in samples), default=0)
    series = []
    for i in range(count):
        values = [s["gpus"][i].get(key) for s in samples if len(s.get("gpus") or []) > i]
        series.append(np.array([v for v in values if v is not None], dtype=float))
    return series


def _gpu_memory_percent(samples: list[dict]) -> list[np.ndarray]:
    used, total = _gpu_series(samples, "mem_used_bytes"), _gpu_series(samples, "mem_total_bytes")
    return [u[: len(t)] / np.maximum(t[: len(u)], 1) * 100 for u, t in zip(used, total)]


def _window_ends(n: int, window: int, patience: int):
    """Evaluation points of a sliding-window rule: after `patience` points, about every window/5."""
    stride = max(1, window // 5)
    start = max(patience, window)
    return range(start, n + 1, stride) if n >= start else range(0)


def _not_applicable(reason: str) -> tuple:
    return False, 0, 0, [], reason, {"not_applicable": True}


# --- debugger rules --------------------------------------------------------------------------------

@_rule("VanishingGradient", "debugger", {"threshold": 1e-7},
       "Mean absolute gradient of a layer below `threshold` on a sampled step: that layer no longer learns. "
       "SageMaker looked at one step in 500; here every sampled step, and the layers are named.",
       "Check the activation functions, normalisation and initialisation of the named layers, or a learning-rate "
       "schedule that froze them; residual connections and batch norm keep gradients alive.")
def vanishing_gradient(rec, p, _all):
    rows = [r for r in rec.layers if r.get("grad_mean_abs")]
    if not rows:
        return _not_applicable("no per-layer gradient samples were collected")
    steps, worst = [], {}
    for row in rows:
        small = {k: v for k, v in row["grad_mean_abs"].items() if v is not None and math.isfinite(v) and v < p["threshold"]}
        if small:
            steps.append(int(row.get("step", 0)))
            worst.update(small)
    if not steps:
        return False, 0, len(rows), [], f"mean |gradient| of every layer stayed above {p['threshold']:g} on {len(rows)} sampled steps", {}
    names = sorted(worst, key=worst.get)[:5]
    return True, len(steps), len(rows), steps, (f"{len(worst)} layers had mean |gradient| < {p['threshold']:g} on {len(steps)} of "
                                               f"{len(rows)} sampled steps (e.g. {', '.join(names)}) from step {steps[0]}"), {"layers": names}


@_rule("ExplodingTensor", "debugger", {"stop": True},
       "A non-finite (NaN or infinite) loss or gradient norm, checked every step in the process, so training can "
       "stop at once rather than after a separate rule job noticed. SageMaker's only_nan is not offered: the records "
       "store both as null. Gradient norms the fp16 loss scaler skipped on purpose do not count.",
       "Lower the learning rate, add warm-up or gradient clipping, check the inputs for NaN, and with fp16 keep "
       "the loss scaler on (amp=bf16 avoids overflow).")
def exploding_tensor(rec, p, _all):
    # The collection writes non-finite values as null; a step whose key is present and null diverged.
    loss_bad = np.array([("loss" in s and s["loss"] is None) or not math.isfinite(_float(s.get("loss", 0.0))) for s in rec.steps], dtype=bool)
    hp = rec.job.get("hyperparameters") or {}
    may_skip = str(hp.get("amp", "")) == "fp16" or (str(hp.get("amp", "auto")) == "auto" and rec.has_gpu)
    norm_bad = np.array([not may_skip and "grad_norm" in s and (s["grad_norm"] is None or not math.isfinite(_float(s["grad_norm"])))
                         for s in rec.steps], dtype=bool)
    bad = loss_bad | norm_bad
    for row in rec.layers:  # per-layer norms of sampled steps
        if any(v is None or not math.isfinite(_float(v)) for v in (row.get("grad_norm") or {}).values()):
            bad[rec.step_numbers == int(row.get("step", -1))] = True
    n = len(rec.steps)
    if not n:
        return _not_applicable("no training steps were recorded")
    steps = rec.step_numbers[bad].tolist()
    if not steps:
        return False, 0, n, [], f"loss and gradient norm finite on all {n} steps", {}
    first = steps[0]
    culprit = "loss" if loss_bad[int(np.flatnonzero(bad)[0])] else "gradient norm"
    return True, len(steps), n, steps, f"non-finite {culprit} at step {first} ({len(steps)} of {n} steps)", {"first_step": first}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@_rule("LossNotDecreasing", "debugger", {"num_steps": 10, "diff_percent": 0.0, "min_progress_percent": 5.0},
       "Compares the mean loss of each window of `num_steps` steps with the window before (SageMaker compared two "
       "single losses `num_steps` saved steps apart, i.e. 500·num_steps steps by default). A rise counts only when "
       "it is beyond 3 standard errors of the minibatch noise (more on long runs, which compare many windows) and the "
       "next window stays up too. It also fires when the smoothed loss is still within "
       "`min_progress_percent` of where training started (no progress at all).",
       "Check that the learning rate is not zero or tiny, that the labels match the images, and that the layers you "
       "meant to train are not frozen (finetune).")
def loss_not_decreasing(rec, p, _all):
    steps, loss = rec.step_numbers, rec.column("loss")
    keep = np.isfinite(loss)
    steps, loss = steps[keep], loss[keep]
    n = max(1, int(p["num_steps"]))
    if len(loss) < 2 * n:
        return False, 0, len(loss), [], f"needs {2 * n} steps with a loss, has {len(loss)}", {}
    start = float(loss[:n].mean())
    risen, stalled = [], []
    ends = range(2 * n, len(loss) + 1, n)
    # A long run makes thousands of comparisons: widen the margin so noise alone stays below one false alarm,
    # and ask the rise to last (the next window stays above the window before the rise too).
    z = max(3.0, math.sqrt(2 * math.log(max(len(ends), 1))))
    for end in ends:
        recent, earlier = loss[end - n:end], loss[end - 2 * n:end - n]
        after = loss[end:end + n] if end + n <= len(loss) else recent
        noise = math.sqrt(recent.var(ddof=1) / n + earlier.var(ddof=1) / n) if n > 1 else 0.0
        bar = earlier.mean() * (1 - p["diff_percent"] / 100) + z * noise
        if recent.mean() >= bar and after.mean() >= bar:
            risen.append(int(steps[end - 1]))
        if recent.mean() >= start * (1 - p["min_progress_percent"] / 100):
            stalled.append(int(steps[end - 1]))
    checks = len(range(2 * n, len(loss) + 1, n))
    last_step = int(steps[(len(loss) // n) * n - 1])
    no_progress = bool(stalled) and stalled[-1] == last_step
    fired = sorted(set(risen) | (set(stalled) if no_progress else set()))
    end_loss = float(loss[-n:].mean())
    details = {"start_loss": start, "end_loss": end_loss, "rose_at": risen, "no_progress_at": stalled}
    if not fired:
        return False, 0, checks, [], f"mean loss fell from {start:.4g} to {end_loss:.4g} over {int(steps[-1])} steps", details
    parts = []
    if no_progress:
        parts.append(f"mean loss {end_loss:.4g} at step {last_step} is not {p['min_progress_percent']:g}% below the start ({start:.4g})")
    if risen:
        parts.append(f"rose over {len(risen)} windows of {n} steps (steps {_fmt_steps(risen, 4)})")
    return True, len(fired), checks, fired, "; ".join(parts), details


def _epoch_end_steps(rec: Records) -> dict[int, int]:
    ends = {}
    for row in rec.steps:
        if "epoch" in row and "step" in row:
            ends[int(row["epoch"])] = max(ends.get(int(row["epoch"]), 0), int(row["step"]))
    return ends


def _epoch_losses(rec: Records, key: str) -> list[tuple[int, float]]:
    out = []
    for i, row in enumerate(rec.history):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append((int(row.get("epoch", i + 1)), float(value)))
    return out


@_rule("Overfit", "debugger", {"start_step": 0, "patience": 1, "ratio_threshold": 0.1},
       "Relative gap (valid loss − train loss) / train loss above `ratio_threshold` for `patience` validation passes "
       "in a row (one per epoch), after global step `start_step`, counting only passes where the valid loss is not at "
       "a new low. SageMaker counted every pass, so a model still learning from scratch, whose valid loss lags (batch "
       "norm statistics, fast-moving weights) but falls every epoch, was called overfit. The train loss includes label "
       "smoothing, which raises it: a gap that still shows is real.",
       "Use more data or stronger augmentation (crop-scale, hflip), more weight decay or label smoothing, fewer epochs "
       "(early-stopping-patience keeps the best epoch's weights), or fine-tune fewer layers.")
def overfit(rec, p, _all):
    train, valid = dict(_epoch_losses(rec, "train_loss")), dict(_epoch_losses(rec, "valid_loss"))
    ends = _epoch_end_steps(rec)
    epochs = [e for e in sorted(train) if e in valid and ends.get(e, math.inf) >= p["start_step"]]
    if not epochs:
        return False, 0, 0, [], "no epoch with both a train and a valid loss yet", {}
    streak, fired, ratios, best = 0, [], {}, math.inf
    for e in epochs:
        ratios[e] = (valid[e] - train[e]) / max(train[e], 1e-12)
        improving = valid[e] < best
        best = min(best, valid[e])
        streak = streak + 1 if ratios[e] > p["ratio_threshold"] and not improving else 0
        if streak >= max(1, p["patience"]):
            fired.append(e)
    details = {"ratio_by_epoch": ratios, "best_valid_epoch": min(valid, key=valid.get)}
    if not fired:
        return False, 0, len(epochs), [], (f"no lasting gap: valid/train loss gap at most {max(ratios.values()):+.0%} over {len(epochs)} "
                                           f"epochs, outside epochs where the valid loss kept falling"), details
    e = fired[0]
    return True, len(fired), len(epochs), fired, (f"from epoch {e} valid loss exceeds train loss by {ratios[e]:.0%} (> {p['ratio_threshold']:.0%}) "
                                                  f"on {len(fired)} epochs; lowest valid loss at epoch {details['best_valid_epoch']}"), details


@_rule("Overtraining", "debugger", {"patience_train": 5, "patience_validation": 10, "delta": 0.1},
       "Train loss not improved by `delta` for `patience_train` epochs, or valid loss not for `patience_validation` "
       "epochs (SageMaker counted saved steps; here every validation pass is one point).",
       "Training longer does not help: stop earlier (early-stopping-patience), lower the learning rate on a plateau, "
       "or change the model or data.")
def overtraining(rec, p, _all):
    fired, why = set(), []
    datapoints = 0
    for key, patience in (("train_loss", p["patience_train"]), ("valid_loss", p["patience_validation"])):
        series = _epoch_losses(rec, key)
        datapoints += len(series)
        best, since, first = math.inf, 0, None
        for epoch, value in series:
            if value < best - p["delta"]:
                best, since = value, 0
            else:
                since += 1
                if since >= max(1, patience):
                    fired.add(epoch)
                    first = first or epoch
        if first is not None:
            why.append(f"{key.split('_')[0]} loss has not improved by {p['delta']:g} for {since} epochs (since best {best:.4g}), "
                       f"first flagged at epoch {first}")
    if not datapoints:
        return False, 0, 0, [], "no epoch losses yet", {}
    if not fired:
        return False, 0, datapoints, [], "train and valid loss kept improving within their patience", {}
    return True, len(fired), datapoints, sorted(fired), "; ".join(why), {}


@_rule("PoorWeightInitialization", "debugger", {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10},
       "Over the first `steps` steps: the variance of the ReLU inputs differs between layers by more than `threshold`x, "
       "or the gradients' 5th-95th percentile spread is below `distribution_range`. SageMaker also flags a loss that "
       "does not fall within `patience` steps; ten noisy minibatch losses (often during lr warm-up) cannot convict "
       "an initialisation alone, so that check is reported but fires only together with one of the others. Jobs "
       "that start from pretrained weights are not judged: learned BN scales and small fine-tuning gradients would "
       "trip both thresholds without any initialisation at fault.",
       "Re-initialise the named layers (Kaiming/He for ReLU networks, zero-init of the last BN in residual blocks), "
       "or start from pretrained weights.")
def poor_weight_initialization(rec, p, _all):
    init = rec.init
    variances = {k: float(v) for k, v in (init.get("activation_variance") or {}).items() if v is not None}
    if not variances and init.get("grad_p5") is None:
        return _not_applicable("no first-steps statistics (init.json) were collected")
    problems, details = [], {}
    finite = {k: v for k, v in variances.items() if math.isfinite(v)}
    if finite:
        high, low = max(finite, key=finite.get), min(finite, key=finite.get)
        ratio = finite[high] / finite[low] if finite[low] > 0 else math.inf
        details.update(variance_ratio=ratio, highest_layer=high, lowest_layer=low)
        if ratio > p["threshold"] or len(finite) < len(variances):
            problems.append(f"ReLU-input variance differs {ratio:.3g}x between layers ({high} {finite[high]:.3g} vs {low} {finite[low]:.3g}; "
                            f"threshold {p['threshold']:g}x)")
    p5, p95 = np.atleast_1d(np.array(init.get("grad_p5", []), dtype=float)), np.atleast_1d(np.array(init.get("grad_p95", []), dtype=float))
    if p5.size and p95.size:
        spread = float(np.nanmedian(p95[: len(p5)] - p5[: len(p95)]))
        details["gradient_spread"] = spread
        if spread < p["distribution_range"]:
            problems.append(f"gradient 5-95th percentile spread {spread:.3g} < {p['distribution_range']:g}")
    losses = np.array([v for v in init.get("losses", []) if v is not None], dtype=float)[: int(p["steps"])]
    k = int(p["patience"])
    if len(losses) > k:
        stalled = bool(np.nanmean(losses[-k:]) >= np.nanmean(losses[:k]))
        details["loss_stalled"] = stalled
        if stalled and problems:
            problems.append(f"loss did not fall within {k} steps")
    checked = int(init.get("steps") or len(losses))
    weights = str((rec.job.get("hyperparameters") or {}).get("weights", "none")).lower()
    if weights != "none":  # learned BN scales and small fine-tuning gradients are not an initialisation
        return False, 0, checked, [], (f"starts from pretrained weights ({weights}); the rule judges random initialisation "
                                      f"(variance ratio {details.get('variance_ratio', math.nan):.3g}x, gradient spread "
                                      f"{details.get('gradient_spread', math.nan):.3g})"), {**details, "not_applicable": True}
    if not problems:
        return False, 0, checked, [], f"first {checked} steps look healthy (variance ratio {details.get('variance_ratio', math.nan):.3g}x, " \
                                      f"gradient spread {details.get('gradient_spread', math.nan):.3g})", details
    return True, len(problems), checked, list(range(1, checked + 1)), "; ".join(problems), details


@_rule("WeightUpdateRatio", "debugger", {"large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9},
       "‖Δw‖/‖w‖ of a layer on a sampled step above `large_threshold` or below `small_threshold`. SageMaker needed "
       "weights saved on two consecutive steps (save_interval=1); here the update itself is measured on sampled steps. "
       "About 1e-3 is the usual healthy size. Large ratios on step 1 are left out: biases and norm shifts start at "
       "zero, so their first update divided by a zero norm means nothing.",
       "Ratios near zero: the learning rate is zero or tiny, or the layer is frozen by mistake. Ratios near or above "
       "one: the learning rate is far too high.")
def weight_update_ratio(rec, p, _all):
    rows = [r for r in rec.layers if r.get("update_ratio")]
    if not rows:
        return _not_applicable("no per-layer update ratios were collected")
    steps, too_big, too_small, all_ratios = [], set(), set(), []
    for row in rows:
        hit = False
        for layer, ratio in row["update_ratio"].items():
            if ratio is None or not math.isfinite(ratio):
                continue
            all_ratios.append(ratio)
            if ratio > p["large_threshold"] and int(row.get("step", 0)) > 1:
                too_big.add(layer)
                hit = True
            elif ratio < p["small_threshold"]:
                too_small.add(layer)
                hit = True
        if hit:
            steps.append(int(row.get("step", 0)))
    median = float(np.median(all_ratios)) if all_ratios else math.nan
    details = {"median_ratio": median, "too_large": sorted(too_big), "too_small": sorted(too_small)}
    if not steps:
        return False, 0, len(rows), [], f"update ratios within [{p['small_threshold']:g}, {p['large_threshold']:g}] (median {median:.3g})", details
    parts = []
    if too_small:
        parts.append(f"{len(too_small)} layers updated by < {p['small_threshold']:g} of their norm (e.g. {', '.join(sorted(too_small)[:3])})")
    if too_big:
        parts.append(f"{len(too_big)} layers by > {p['large_threshold']:g}x (e.g. {', '.join(sorted(too_big)[:3])})")
    return True, len(steps), len(rows), steps, "; ".join(parts) + f" on {len(steps)} of {len(rows)} sampled steps; median ratio {median:.3g}", details


@_rule("ClassImbalance", "debugger", {"threshold_imbalance": 10.0, "threshold_misprediction": 0.7, "samples": 500},
       "Largest/smallest class count in the training split above `threshold_imbalance` (counted on the whole dataset "
       "before training, not on a sample of labels), or a class mispredicted more than `threshold_misprediction` of the "
       "time in the final evaluation once it holds `samples` images.",
       "Collect more images of the rare classes, oversample them, or weight the loss by inverse class frequency; "
       "judge the model by per-class accuracy (confusion_matrix.csv), not overall accuracy.")
def class_imbalance(rec, p, _all):
    counts = (rec.dataset.get("counts") or {}).get("train")
    names = rec.dataset.get("class_names") or []
    if not counts:
        return _not_applicable("no class counts (dataset.json) were collected")
    counts = np.array(counts, dtype=float)
    ratio = float(counts.max() / counts.min()) if counts.min() > 0 else math.inf
    label = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
    parts, details = [], {"ratio": ratio, "largest": label(int(counts.argmax())), "smallest": label(int(counts.argmin()))}
    if ratio > p["threshold_imbalance"]:
        parts.append(f"train classes are {ratio:.3g}x imbalanced ({details['largest']} {int(counts.max())} images vs "
                     f"{details['smallest']} {int(counts.min())}; threshold {p['threshold_imbalance']:g}x)")
    cm = np.array(rec.confusion or [], dtype=float)
    if cm.ndim == 2 and cm.size and cm.sum() >= p["samples"]:
        totals = cm.sum(axis=1)
        errors = np.where(totals > 0, 1 - np.diag(cm) / np.maximum(totals, 1), 0.0)
        bad = [label(i) for i in np.flatnonzero(errors > p["threshold_misprediction"])]
        details["misprediction_by_class"] = dict(zip(map(label, range(len(errors))), errors.tolist()))
        if bad:
            parts.append(f"{len(bad)} classes mispredicted > {p['threshold_misprediction']:.0%} of the time ({', '.join(bad[:5])})")
    if not parts:
        return False, 0, len(counts), [], f"largest/smallest train class {ratio:.3g}x (threshold {p['threshold_imbalance']:g}x)", details
    return True, len(parts), len(counts), [], "; ".join(parts), details


@_rule("DeadRelu", "debugger", {"threshold_inactivity": 1.0, "threshold_layer": 50.0},
       "A ReLU channel is dead when it is active (> 0) on less than `threshold_inactivity` % of its outputs; a layer "
       "fires when more than `threshold_layer` % of its channels are dead on a sampled step.",
       "Lower the learning rate, use warm-up, check initialisation and normalisation before the layer, or use "
       "LeakyReLU/GELU in a custom model.")
def dead_relu(rec, p, _all):
    rows = [r for r in rec.layers if r.get("relu_active")]
    if not rows:
        return _not_applicable("no ReLU activity samples were collected")
    steps, layers, worst = [], set(), 0.0
    for row in rows:
        hit = False
        for layer, active in row["relu_active"].items():
            active = np.array([a for a in active if a is not None], dtype=float)
            if not active.size:
                continue
            dead = float((active * 100 < p["threshold_inactivity"]).mean() * 100)
            worst = max(worst, dead)
            if dead > p["threshold_layer"]:
                layers.add(layer)
                hit = True
        if hit:
            steps.append(int(row.get("step", 0)))
    if not steps:
        return False, 0, len(rows), [], f"at most {worst:.0f}% dead channels in any ReLU layer over {len(rows)} sampled steps", {}
    return True, len(steps), len(rows), steps, (f"{len(layers)} ReLU layers with > {p['threshold_layer']:g}% dead channels "
                                               f"({', '.join(sorted(layers)[:4])}) on {len(steps)} of {len(rows)} sampled steps"), {"layers": sorted(layers)}


# --- profiler rules --------------------------------------------------------------------------------

def step_outliers(rec: Records, p: dict) -> dict:
    """Both outlier tests over the step durations, and the component that made each robust outlier slow."""
    total, steps = rec.column("total"), rec.step_numbers
    ok = np.isfinite(total)
    ok[:warmup_count(len(total))] = False
    # Steps slow by design: inside the torch.profiler window, or paying for the per-layer statistics.
    ok &= ~np.isin(steps, rec.profiler_window.get("steps") or [])
    ok &= ~np.array([bool(s.get("profiled") or s.get("sampled")) for s in rec.steps], dtype=bool)
    values = total[ok]
    result = {"n": int(ok.sum()), "robust": [], "sigma": [], "cause": {}, "threshold_robust": math.nan, "threshold_sigma": math.nan}
    if len(values) < 3:
        return result
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826  # scaled: equals sigma for normal data
    robust_threshold = median + p["mad_multiplier"] * max(mad, median * p["min_excess_percent"] / 100 / p["mad_multiplier"])
    sigma_threshold = float(values.mean() + p["stddev"] * values.std())
    robust = ok & (total > robust_threshold)
    result.update(threshold_robust=robust_threshold, threshold_sigma=sigma_threshold, median=median, mad=mad,
                  robust=steps[robust].tolist(), sigma=steps[ok & (total > sigma_threshold)].tolist())
    inliers = ok & ~robust
    medians = {c: float(np.nanmedian(rec.column(c)[inliers])) if inliers.any() else 0.0 for c in STEP_COMPONENTS}
    columns = {c: rec.column(c) for c in STEP_COMPONENTS}
    for i in np.flatnonzero(robust):
        excess = {c: (columns[c][i] - medians[c]) if math.isfinite(columns[c][i]) else -math.inf for c in STEP_COMPONENTS}
        cause = max(excess, key=excess.get)
        result["cause"][int(steps[i])] = cause if math.isfinite(excess[cause]) else "other"
    return result


@_rule("StepOutlier", "profiler", {"stddev": 3.0, "n_outliers": 10, "mad_multiplier": 5.0, "min_excess_percent": 20.0},
       "Steps slower than median + `mad_multiplier`·MAD (robust: one long stall does not hide the others, as it does "
       "in a mean and sigma it inflates), after a warm-up of 5 steps, and at least `min_excess_percent` % above the "
       "median (steps slow by design are left out: the torch.profiler window's and the sampled steps that pay for "
       "per-layer statistics); SageMaker's mean + `stddev`·sigma count is shown beside it but does not fire the rule: over a long "
       "job, 0.13 % of even perfectly normal step times lie beyond 3 sigma, so its fixed `n_outliers` is always "
       "exceeded (50,000 steps: about 65). Fires on more than `n_outliers` robust outliers; each outlier names the part of the step that made it slow "
       "(data wait, host-to-device copy, forward, backward, optimizer, other).",
       "Look at the named component: data wait points at the input pipeline or storage, compute parts at contention "
       "from other processes or garbage collection; 'other' covers logging and checkpoints inside a step.")
def step_outlier(rec, p, _all):
    found = step_outliers(rec, p)
    if found["n"] < 3:
        return False, 0, found["n"], [], f"only {found['n']} timed steps after warm-up", found
    by_cause = {}
    for cause in found["cause"].values():
        by_cause[cause] = by_cause.get(cause, 0) + 1
    found["by_cause"] = by_cause
    robust, sigma = found["robust"], found["sigma"]
    triggered = len(robust) > p["n_outliers"]
    causes = ", ".join(f"{COMPONENT_NAMES.get(c, c)} {k}" for c, k in sorted(by_cause.items(), key=lambda kv: -kv[1]))
    message = (f"{len(robust)} of {found['n']} steps above median+{p['mad_multiplier']:g}·MAD = {found['threshold_robust']:.3g}s "
               f"(median {found['median']:.3g}s), {len(sigma)} above mean+{p['stddev']:g}σ = {found['threshold_sigma']:.3g}s")
    if robust:
        message += f"; slow part: {causes}; steps {_fmt_steps(robust, 5)}"
    steps = sorted(set(robust) | set(sigma))
    return triggered, len(robust), found["n"], steps, message, found


def _input_bound(rec: Records, threshold_percent: float) -> tuple[bool, float, list[int]]:
    share, per_step = data_wait_share(rec)
    if not math.isfinite(share):
        return False, share, []
    slow = rec.step_numbers[np.nan_to_num(per_step, nan=0.0) * 100 > threshold_percent].tolist()
    return share * 100 > threshold_percent, share, slow


def _iowait_share(samples: list[dict], io_threshold: float) -> float:
    iowait = np.array([s["iowait"] for s in samples if s.get("iowait") is not None], dtype=float)
    return float((iowait > io_threshold).mean() * 100) if iowait.size else math.nan


def _sagemaker_bottleneck(samples: list[dict], key: str, threshold: float, gpu_threshold: float, patience: int) -> tuple[int, int] | None:
    """SageMaker's test: samples where some GPU is below gpu_threshold while `key` exceeds `threshold`."""
    samples = [s for s in samples if s.get("gpus")]
    if len(samples) <= patience:
        return None
    hits = 0
    for s in samples:
        low_gpu = any((g.get("util") or 0) < gpu_threshold for g in s["gpus"])
        value = max(s.get("cpu") or [0]) if key == "cpu" else (s.get("iowait") or 0)
        hits += low_gpu and value > threshold
    return hits, len(samples)


@_rule("CPUBottleneck", "profiler", {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0, "patience": 1000,
                                     "data_wait_threshold": 20.0},
       "Input-bound on the host: more than `data_wait_threshold` % of step time is spent waiting for the next batch "
       "(measured in the loop), and the disk is not the cause (see IOBottleneck). SageMaker's test (a GPU under "
       "`gpu_threshold` % while a core is over `cpu_threshold` %, in more than `threshold` % of samples after "
       "`patience` samples) is run beside it on GPU jobs; on its own it mistakes any busy core for a bottleneck.",
       "Give the DataLoader more workers (hyperparameter workers), smaller images on disk, or a larger instance; on GPU "
       "keep pin_memory on.")
def cpu_bottleneck(rec, p, params):
    bound, share, slow = _input_bound(rec, p["data_wait_threshold"])
    if not math.isfinite(share):
        return _not_applicable("no per-step data-wait times were recorded")
    samples = loop_samples(rec)
    io = params.get("IOBottleneck", RULES["IOBottleneck"].defaults)
    io_bound = _iowait_share(samples, io["io_threshold"]) > io["threshold"]
    sm = _sagemaker_bottleneck(samples, "cpu", p["cpu_threshold"], p["gpu_threshold"], int(p["patience"]))
    sm_fired = sm is not None and sm[0] / sm[1] * 100 > p["threshold"]
    cpu = [float(np.mean(s["cpu"])) for s in samples if s.get("cpu")]
    details = {"data_wait_share": share, "sagemaker_test": sm, "cpu_mean": float(np.mean(cpu)) if cpu else None}
    triggered = (bound and not io_bound) or sm_fired
    workers = rec.loader.get("num_workers")
    text = f"data wait is {share:.0%} of step time (threshold {p['data_wait_threshold']:g}%)"
    if cpu:
        text += f", CPU {details['cpu_mean']:.0f}% on average"
    if workers is not None:
        text += f", {workers} loader workers for {rec.loader.get('cores', '?')} cores"
    if sm is not None:
        text += f"; SageMaker's test: {sm[0]} of {sm[1]} samples"
    text = ("input-bound: " if triggered else "not input-bound: ") + text
    return triggered, len(slow) if triggered else 0, len(rec.steps), slow if triggered else [], text, details


@_rule("IOBottleneck", "profiler", {"threshold": 50.0, "gpu_threshold": 10.0, "io_threshold": 50.0, "patience": 1000,
                                    "data_wait_threshold": 20.0},
       "Input-bound on storage: more than `data_wait_threshold` % of step time waiting for data while I/O wait is above "
       "`io_threshold` % in more than `threshold` % of the system samples of the loop. SageMaker's GPU-coincidence test "
       "is run beside it on GPU jobs.",
       "Copy the data to local disk or memory first (SageMaker File mode, or FastFile for large sets), store fewer and "
       "smaller files, and add loader workers so reads overlap.")
def io_bottleneck(rec, p, _all):
    bound, share, slow = _input_bound(rec, p["data_wait_threshold"])
    samples = loop_samples(rec)
    io_share = _iowait_share(samples, p["io_threshold"])
    if not math.isfinite(share) and not math.isfinite(io_share):
        return _not_applicable("neither data-wait times nor I/O wait samples were recorded")
    sm = _sagemaker_bottleneck(samples, "iowait", p["io_threshold"], p["gpu_threshold"], int(p["patience"]))
    sm_fired = sm is not None and sm[0] / sm[1] * 100 > p["threshold"]
    io_bound = math.isfinite(io_share) and io_share > p["threshold"]
    triggered = (bound and io_bound) or sm_fired
    text = (f"data wait {share:.0%} of step time, I/O wait above {p['io_threshold']:g}% in "
            f"{io_share if math.isfinite(io_share) else 0:.0f}% of samples")
    return triggered, len(slow) if triggered else 0, len(samples), slow if triggered else [], \
        ("storage-bound: " if triggered else "not storage-bound: ") + text, {"iowait_share": io_share, "sagemaker_test": sm}


@_rule("LowGPUUtilization", "profiler", {"threshold_p95": 70.0, "threshold_p5": 10.0, "window": 500, "patience": 1000},
       "Per GPU over the loop: p95 of utilisation in the last `window` samples below `threshold_p95` (under-used), or "
       "p95 above it while p5 is below `threshold_p5` (fluctuating, usually a starving input pipeline); evaluated after "
       "`patience` samples, like SageMaker. The verdict at the top of the report also covers shorter jobs.",
       "Under-used: increase the batch size or use a smaller instance. Fluctuating: see the data wait share and the "
       "input-bound rules.")
def low_gpu_utilization(rec, p, _all):
    if not rec.has_gpu:
        return _not_applicable("the job ran without a GPU")
    series = _gpu_series(loop_samples(rec), "util")
    window, patience = int(p["window"]), int(p["patience"])
    hits, count, datapoints, summary = [], 0, 0, []
    for gpu, util in enumerate(series):
        datapoints += len(util)
        summary.append(f"GPU{gpu} p5 {_pct(util, 5):.0f}% p50 {_pct(util, 50):.0f}% p95 {_pct(util, 95):.0f}%")
        for end in _window_ends(len(util), window, patience):
            recent = util[end - window:end]
            p95, p5 = _pct(recent, 95), _pct(recent, 5)
            if p95 < p["threshold_p95"] or p5 < p["threshold_p5"]:
                count += 1
                hits.append(gpu)
    n = min((len(u) for u in series), default=0)
    if n <= patience:
        return False, 0, datapoints, [], f"{'; '.join(summary) or 'no GPU samples'} ({n} samples, rule needs > {patience})", {}
    text = "; ".join(summary)
    return bool(count), count, datapoints, [], ("low or fluctuating utilisation: " if count else "") + text, {"gpus": sorted(set(hits))}


@_rule("BatchSize", "profiler", {"cpu_threshold_p95": 70.0, "gpu_threshold_p95": 70.0, "gpu_memory_threshold_p95": 70.0,
                                 "patience": 1000, "window": 500},
       "CPU, GPU and GPU memory all under their p95 thresholds in the last `window` samples after `patience`: the "
       "batch could be larger. GPU memory is the allocator's peak per step where recorded (NVML's figure includes "
       "the caching allocator's reserve and overstates use).",
       "Increase batch-size (and lr with it), or use a smaller instance.")
def batch_size(rec, p, _all):
    if not rec.has_gpu:
        return _not_applicable("the job ran without a GPU")
    samples = loop_samples(rec)
    window, patience = int(p["window"]), int(p["patience"])
    if len(samples) <= max(window, patience):
        return False, 0, len(samples), [], f"{len(samples)} samples, rule needs > {max(window, patience)}", {}
    recent = samples[-window:]
    cpu = np.array([np.mean(s["cpu"]) for s in recent if s.get("cpu")], dtype=float)
    util = _gpu_series(recent, "util")
    totals = [t for t in _gpu_series(recent, "mem_total_bytes") if t.size]
    peak = rec.column("cuda_peak_bytes")
    if np.isfinite(peak).any() and totals:
        memory = [np.array([np.nanmax(peak) / totals[0].max() * 100])]
    else:
        memory = _gpu_memory_percent(recent)
    small = (_pct(cpu, 95) < p["cpu_threshold_p95"] and all(_pct(u, 95) < p["gpu_threshold_p95"] for u in util)
             and all(_pct(m, 95) < p["gpu_memory_threshold_p95"] for m in memory))
    text = (f"p95 CPU {_pct(cpu, 95):.0f}%, GPU {', '.join(f'{_pct(u, 95):.0f}%' for u in util)}, "
            f"GPU memory {', '.join(f'{_pct(m, 95):.0f}%' for m in memory)}")
    return small, int(small), len(samples), [], ("batch could be larger: " if small else "") + text, {}


@_rule("GPUMemoryIncrease", "profiler", {"increase": 5.0, "patience": 1000, "window": 10},
       "Mean GPU memory of the last `window` points rose more than `increase` percentage points over the `window` "
       "before, after `patience` points. Uses the allocator's peak per step when recorded (exact, every step), "
       "else NVML samples.",
       "A leak usually holds tensors across steps (a loss kept with its graph, growing lists of outputs): detach or "
       "call .item() on what you keep.")
def gpu_memory_increase(rec, p, _all):
    if not rec.has_gpu:
        return _not_applicable("the job ran without a GPU")
    peak = rec.column("cuda_peak_bytes")
    totals = _gpu_series(rec.system, "mem_total_bytes")
    if np.isfinite(peak).sum() > 0 and totals and totals[0].size:
        series, what, steps = [peak[np.isfinite(peak)] / totals[0].max() * 100], "allocator peak per step", rec.step_numbers[np.isfinite(peak)]
    else:
        series, what, steps = _gpu_memory_percent(loop_samples(rec)), "NVML memory", None
    window, patience = max(1, int(p["window"])), int(p["patience"])
    fired = []
    for values in series:
        if len(values) < 2 * window:
            continue
        sums = np.concatenate([[0.0], np.cumsum(values)])
        ends = np.arange(max(patience, 2 * window), len(values) + 1)
        rise = (sums[ends] - 2 * sums[ends - window] + sums[ends - 2 * window]) / window  # mean(last) - mean(before)
        for end in ends[rise > p["increase"]]:
            fired.append(int(steps[end - 1]) if steps is not None else int(end))
    n = max((len(v) for v in series), default=0)
    if n < max(patience, 2 * window):
        return False, 0, n, [], f"{n} points of {what}, rule needs {max(patience, 2 * window)}", {}
    if not fired:
        return False, 0, n, [], f"{what} never rose more than {p['increase']:g} points within {window} points", {}
    return True, len(fired), n, fired, f"{what} rose more than {p['increase']:g} points at {len(fired)} points (from {fired[0]})", {}


@_rule("Dataloader", "profiler", {"min_threshold": 70.0, "max_threshold": 200.0, "data_wait_threshold": 20.0},
       "Loader workers against CPU cores: fewer than `min_threshold` % of the cores while the loop waits for data "
       "more than `data_wait_threshold` % of step time, or more than `max_threshold` % of the cores (they then fight "
       "the training for CPU). SageMaker counted worker processes from framework events that BYOC PyTorch jobs "
       "never produced, and flagged few workers even when the loop never waited for data.",
       "Set the hyperparameter workers near the number of cores per GPU; on GPU keep pin_memory on and prefetch a few "
       "batches per worker.")
def dataloader(rec, p, _all):
    loader = rec.loader
    if not loader:
        return _not_applicable("no DataLoader settings (loader.json) were recorded")
    workers, cores = int(loader.get("num_workers") or 0), int(loader.get("cores") or 1)
    bound, share, slow = _input_bound(rec, p["data_wait_threshold"])
    too_few = workers < cores * p["min_threshold"] / 100
    too_many = workers > cores * p["max_threshold"] / 100
    advice = []
    if str(loader.get("device", "")).startswith("cuda") and not loader.get("pin_memory"):
        advice.append("pin_memory is off on a GPU")
    text = f"{workers} workers for {cores} cores; data wait {share:.0%} of step time" if math.isfinite(share) else \
        f"{workers} workers for {cores} cores"
    if too_many:
        return True, 1, 1, [], f"too many loader workers: {text} (> {p['max_threshold']:g}% of cores)", {"advice": advice}
    if too_few and bound:
        return True, len(slow), len(rec.steps), slow, f"too few loader workers for an input-bound loop: {text}", {"advice": advice}
    return False, 0, max(1, len(rec.steps)), [], text + ("; " + "; ".join(advice) if advice else ""), {"advice": advice}


def phases(rec: Records) -> dict:
    """Initialization (process start to the first step), training loop, finalization, in seconds."""
    window = loop_window(rec)
    ends = [float(e["t"]) for e in rec.timeline if e.get("t") is not None]
    ends += [float(s["t"]) for s in rec.system[-1:] if s.get("t") is not None]
    end = max(ends, default=window[1] if window else math.nan)
    first_step = rec.event_time("first_step")
    start_loop = window[0] if window else first_step
    if start_loop is None:
        return {"job": end, "initialization": None, "loop": None, "finalization": None}
    loop_end = window[1] if window else start_loop
    return {"job": max(end, loop_end), "initialization": start_loop, "loop": loop_end - start_loop,
            "finalization": max(0.0, end - loop_end)}


@_rule("MaxInitializationTime", "profiler", {"threshold": 20.0},
       "The first training step started more than `threshold` minutes after the process started (or has not started "
       "that long after). The report splits the time before it into the timeline's phases.",
       "Read the timeline: a slow data scan or copy (use fewer, larger files or FastFile mode), a weights download "
       "(bake the weights into the image or pass the pretrained channel), or a slow first batch.")
def max_initialization_time(rec, p, _all):
    times = phases(rec)
    limit = p["threshold"] * 60
    init = times["initialization"]
    if init is None:
        job = times["job"]
        if math.isfinite(job) and job > limit:
            return True, 1, 1, [], f"no training step after {job / 60:.1f} min (threshold {p['threshold']:g} min)", times
        return False, 0, 0, [], "no training step recorded yet", times
    triggered = init > limit
    return triggered, int(triggered), 1, [], f"first step started {init:.1f}s after process start (threshold {p['threshold']:g} min)", times


@_rule("Straggler", "profiler", {"threshold": 20.0},
       "Multi-GPU jobs: a rank whose median step time in an epoch is more than `threshold` % above the median of all "
       "ranks. DDP waits for the slowest rank every step, so one straggler slows every GPU.",
       "Look for a slower device or host (thermal throttling, a noisy neighbour, a rank that also writes checkpoints "
       "or logs) or uneven data on that rank.")
def straggler(rec, p, _all):
    if len({r.get("rank") for r in rec.ranks}) < 2:
        return _not_applicable("single-process job")
    fired, worst = [], {}
    for epoch in sorted({int(r.get("epoch", 0)) for r in rec.ranks}):
        rows = [r for r in rec.ranks if int(r.get("epoch", 0)) == epoch and r.get("p50") is not None]
        median = float(np.median([r["p50"] for r in rows])) if rows else math.nan
        for r in rows:
            slower = (r["p50"] / median - 1) * 100 if median > 0 else 0.0
            if slower > p["threshold"]:
                fired.append(epoch)
                worst[int(r["rank"])] = max(worst.get(int(r["rank"]), 0.0), slower)
    epochs = len({r.get("epoch") for r in rec.ranks})
    if not fired:
        return False, 0, epochs, [], f"all ranks within {p['threshold']:g}% of the median step time", {}
    ranks = ", ".join(f"rank {k} +{v:.0f}%" for k, v in sorted(worst.items()))
    return True, len(fired), epochs, sorted(set(fired)), f"stragglers: {ranks} (epochs {_fmt_steps(sorted(set(fired)))})", {"ranks": worst}


@_rule("HostMemoryIncrease", "profiler", {"increase": 20.0, "min_increase_mb": 100.0},
       "The training process's resident memory at the end of the loop is more than `increase` % and `min_increase_mb` "
       "MB above its level once warmed up (the median of the samples between 15 and 25 % of the loop). SageMaker "
       "never checked host memory, where data-loading leaks show.",
       "Something keeps growing across steps: caches in a Dataset, lists of outputs or losses kept as tensors, "
       "or many DataLoader workers each copying a Python list (use numpy arrays).")
def host_memory_increase(rec, p, _all):
    samples = [s for s in loop_samples(rec) if s.get("rss_bytes")]
    if len(samples) < 10:
        return False, 0, len(samples), [], f"{len(samples)} memory samples in the loop, rule needs 10", {}
    rss = np.array([s["rss_bytes"] for s in samples], dtype=float)
    n = len(rss)
    base = float(np.median(rss[int(0.15 * n): max(int(0.25 * n), int(0.15 * n) + 1)]))
    end = float(np.median(rss[-max(1, n // 10):]))
    grew = (end - base) / max(base, 1) * 100
    triggered = grew > p["increase"] and (end - base) / 2**20 > p["min_increase_mb"]
    text = f"resident memory {base / 2**20:.0f} MB after warm-up, {end / 2**20:.0f} MB at the end ({grew:+.0f}%)"
    return triggered, int(triggered), n, [], text, {"base_bytes": base, "end_bytes": end}


# --- evaluation ------------------------------------------------------------------------------------

def evaluate_rules(records: Records, params: dict | None = None, only: list[str] | None = None) -> list[Finding]:
    """Every rule (or those in `only`) over the records; a rule that breaks on odd data reports the error."""
    params = params or default_params()
    findings = []
    for name, rule in RULES.items():
        if only is not None and name not in only:
            continue
        p = {**rule.defaults, **params.get(name, {})}
        try:
            triggered, count, datapoints, steps, message, details = rule.evaluate(records, p, params)
        except Exception as exc:  # partial or odd records: say so in the report rather than lose it
            triggered, count, datapoints, steps, message, details = False, 0, 0, [], f"could not evaluate: {type(exc).__name__}: {exc}", {"error": True}
        applicable = not details.pop("not_applicable", False)
        findings.append(Finding(
            rule=name, triggered=bool(triggered), count=int(count), datapoints=int(datapoints), steps=[int(s) for s in steps][:MAX_LISTED_STEPS],
            message=" ".join(message.split()), parameters=p, recommendation=rule.recommendation, description=rule.description,
            kind=rule.kind, applicable=applicable, stop=bool(triggered and p.get("stop")), details=_json_safe(details)))
    return findings


def verdict(records: Records, findings: list[Finding]) -> dict:
    """A few sentences for the top of the report: where the time goes, and what fired."""
    points = []
    total = records.column("total")
    warm = warmup_count(len(total))
    shares = {}
    if np.isfinite(total[warm:]).any():
        spent = np.nansum(total[warm:])
        shares = {c: float(np.nansum(records.column(c)[warm:]) / spent) for c in STEP_COMPONENTS if spent > 0}
    bound = "unknown"
    if shares:
        data = shares.get("data", 0.0)
        compute = sum(shares.get(c, 0.0) for c in ("forward", "backward", "optimizer"))
        bound = "input" if data > RULES["CPUBottleneck"].defaults["data_wait_threshold"] / 100 else "compute"
        top = ", ".join(f"{COMPONENT_NAMES[c]} {v:.0%}" for c, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        if bound == "input":
            headline = f"Input-bound: {data:.0%} of step time waits for data (compute {compute:.0%})."
        else:
            headline = f"Compute-bound: forward+backward+optimizer take {compute:.0%} of step time, data wait {data:.0%}."
        points.append(f"Step time split after warm-up: {top}.")
    else:
        headline = "No step timings were recorded."
    losses = records.column("loss")
    finite = losses[np.isfinite(losses)]
    if finite.size >= 4:
        k = max(1, finite.size // 10)
        points.append(f"Training loss {finite[:k].mean():.4g} → {finite[-k:].mean():.4g} over {finite.size} steps.")
    debugger = [f for f in findings if f.kind == "debugger" and f.triggered]
    profiler = [f for f in findings if f.kind == "profiler" and f.triggered]
    points.append(f"Debugger rules triggered: {', '.join(f.rule for f in debugger) or 'none'}; "
                  f"profiler rules triggered: {', '.join(f.rule for f in profiler) or 'none'}.")
    stopped = [f.rule for f in findings if f.stop]
    if stopped:
        points.append(f"Training was told to stop by: {', '.join(stopped)}.")
    return {"headline": headline, "bound": bound, "component_shares": shares, "points": points,
            "triggered": [f.rule for f in debugger + profiler]}
