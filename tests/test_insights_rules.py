"""Each rule on synthetic records: quiet on a healthy job, firing on a planted pattern.

`healthy_records()` is a plausible 3-epoch CPU job in the raw format of insights/FORMAT.md; each test
plants one fault into it. The same records, written to disk by `write_raw`, feed the report tests.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcls.errors import UserError
from imgcls.insights.records import RAW_DIR, Records, load_records
from imgcls.insights.rules import RULES, evaluate_rules, validate_rule_params, verdict

EPOCHS, STEPS_PER_EPOCH = 3, 40
LAYERS = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "fc.weight", "fc.bias"]
RELUS = ["relu", "layer1.0.relu", "layer1.0.relu#2", "layer2.0.relu"]
DEBUGGER_RULES = [name for name, rule in RULES.items() if rule.kind == "debugger"]


def healthy_records(seed: int = 0, epochs: int = EPOCHS, steps_per_epoch: int = STEPS_PER_EPOCH) -> Records:
    rng = np.random.default_rng(seed)
    steps, layers, t = [], [], 4.0
    n = epochs * steps_per_epoch
    for i in range(n):
        parts = {"data": 0.004, "h2d": 0.001, "forward": 0.03, "backward": 0.05, "optimizer": 0.01}
        parts = {k: v * rng.lognormal(0, 0.05) for k, v in parts.items()}
        parts["other"] = 0.002
        total = sum(parts.values())
        t += total
        loss = 1.1 * math.exp(-i / 50) + 0.3 + rng.normal(0, 0.04)
        steps.append({"epoch": i // steps_per_epoch + 1, "step": i + 1, "t": t, **parts, "total": total, "loss": loss,
                      "grad_norm": 2.0 * math.exp(-i / 80) + 0.5, "lr": 1e-3, "batch": 16, "cuda_peak_bytes": None})
        if i == 0 or (i + 1) % 10 == 0:
            layers.append({"step": i + 1,
                           "grad_norm": {k: float(rng.uniform(0.05, 1.0)) for k in LAYERS},
                           "grad_mean_abs": {k: float(rng.uniform(1e-5, 1e-3)) for k in LAYERS},
                           "update_ratio": {k: float(rng.uniform(3e-4, 3e-3)) for k in LAYERS},
                           "relu_active": {k: rng.uniform(0.3, 0.7, 16).tolist() for k in RELUS}})
    history = []
    for e in range(epochs):
        train_loss = 1.1 * math.exp(-(e + 1) * steps_per_epoch / 50) + 0.35
        history.append({"epoch": e + 1, "train_loss": train_loss, "train_accuracy": 0.5 + 0.1 * e, "valid_loss": train_loss * 0.97,
                        "valid_accuracy": 0.52 + 0.1 * e, "lr": 1e-3, "epoch_seconds": steps_per_epoch * 0.1,
                        "images_per_sec": 160.0, "data_wait_fraction": 0.04})
    system = [{"t": float(s), "cpu": [rng.uniform(85, 99), rng.uniform(85, 99)], "mem_percent": 40.0, "rss_bytes": int(9e8 + rng.normal(0, 5e6)),
               "iowait": 0.5, "disk_read_bytes": int(s * 1e6), "disk_write_bytes": int(s * 1e5), "net_rx_bytes": 0, "net_tx_bytes": 0,
               "gpus": [], "process_cpu": 190.0, "workers_cpu": 0.0} for s in range(0, int(t) + 3)]
    timeline = [{"event": "process_start", "t": 0.0}, {"event": "data_scan_start", "t": 0.5}, {"event": "data_scan_end", "t": 1.5},
                {"event": "model_build_start", "t": 1.6}, {"event": "model_ready", "t": 3.0}, {"event": "training_start", "t": 3.9},
                {"event": "first_batch", "t": 3.95}, {"event": "first_step", "t": steps[0]["t"]}]
    for e in range(epochs):
        timeline.append({"event": "epoch_end", "t": steps[(e + 1) * steps_per_epoch - 1]["t"], "epoch": e + 1})
    timeline += [{"event": "training_end", "t": t + 0.5}, {"event": "end", "t": t + 2.0, "status": "completed"}]
    init = {"steps": 10, "activation_variance": {k: float(rng.uniform(0.8, 2.5)) for k in RELUS}, "grad_p5": -0.004, "grad_p95": 0.004,
            "losses": [s["loss"] for s in steps[:10]]}
    return Records(steps=steps, layers=layers, init=init, history=history, system=system, timeline=timeline,
                   dataset={"class_names": ["a", "b", "c", "d"], "counts": {"train": [60, 55, 62, 58], "valid": [8, 8, 8, 8]}},
                   loader={"num_workers": 0, "pin_memory": False, "prefetch_factor": None, "persistent_workers": False,
                           "batch_size": 16, "cores": 2, "device": "cpu", "world_size": 1, "steps_per_epoch": steps_per_epoch},
                   job={"hyperparameters": {"backbone": "resnet18", "weights": "none", "lr": 0.001, "amp": "auto"}, "rule_params": {}, "device": "cpu",
                        "backbone": "resnet18"})


def write_raw(rec: Records, out: Path, top_ops: list | None = None) -> Path:
    """The records as the collection writes them under <out>/insights/raw (plus history.json)."""
    raw = out / RAW_DIR
    (raw / "profiler").mkdir(parents=True, exist_ok=True)
    for name, rows in (("steps.jsonl", rec.steps), ("layers.jsonl", rec.layers), ("system.jsonl", rec.system)):
        (raw / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, value in (("init.json", rec.init), ("dataset.json", rec.dataset), ("timeline.json", rec.timeline),
                        ("loader.json", rec.loader), ("job.json", rec.job)):
        (raw / name).write_text(json.dumps(value))
    if top_ops:
        (raw / "profiler" / "top_ops.json").write_text(json.dumps(top_ops))
        (raw / "profiler" / "trace.json").write_text('{"traceEvents": []}')
    (out / "history.json").write_text(json.dumps(rec.history))
    return out


def findings(rec: Records, **overrides) -> dict:
    return {f.rule: f for f in evaluate_rules(rec, validate_rule_params(overrides))}


def assert_fires(rec: Records, rule: str, **overrides):
    f = findings(rec, **overrides)[rule]
    assert f.triggered, f"{rule} should fire: {f.message}"
    assert f.applicable and f.count >= 1 and f.message
    return f


# --- healthy ---------------------------------------------------------------------------------------

def test_healthy_job_fires_no_rule():
    result = findings(healthy_records())
    fired = {name: f.message for name, f in result.items() if f.triggered}
    assert fired == {}
    assert not any(f.details.get("error") for f in result.values())
    assert set(result) == set(RULES)
    # GPU-only and DDP-only rules say why they do not apply on a CPU job
    for name in ("LowGPUUtilization", "BatchSize", "GPUMemoryIncrease", "Straggler"):
        assert not result[name].applicable, name


def test_rule_table_has_sagemaker_defaults():
    assert RULES["StepOutlier"].defaults["stddev"] == 3 and RULES["StepOutlier"].defaults["n_outliers"] == 10
    assert RULES["CPUBottleneck"].defaults == {**RULES["CPUBottleneck"].defaults, "threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000}
    assert RULES["LowGPUUtilization"].defaults["threshold_p95"] == 70 and RULES["LowGPUUtilization"].defaults["window"] == 500
    assert RULES["Overfit"].defaults["ratio_threshold"] == 0.1 and RULES["Overtraining"].defaults["patience_validation"] == 10
    assert RULES["VanishingGradient"].defaults["threshold"] == 1e-7
    assert RULES["PoorWeightInitialization"].defaults["threshold"] == 10 and RULES["ClassImbalance"].defaults["threshold_imbalance"] == 10
    assert RULES["MaxInitializationTime"].defaults["threshold"] == 20
    assert RULES["ExplodingTensor"].defaults["stop"] is True and RULES["Overfit"].defaults["stop"] is False
    for rule in RULES.values():
        assert rule.description and rule.recommendation and rule.kind in ("debugger", "profiler")


# --- parameters ------------------------------------------------------------------------------------

def test_rule_params_override_and_coerce():
    params = validate_rule_params({"StepOutlier_stddev": "4.5", "StepOutlier_n_outliers": "3", "Overfit_stop": "true"})
    assert params["StepOutlier"]["stddev"] == 4.5 and params["StepOutlier"]["n_outliers"] == 3
    assert params["Overfit"]["stop"] is True and params["CPUBottleneck"]["threshold"] == 50


@pytest.mark.parametrize("key, value, expected", [
    ("StepOutlier_stdev", 3, "did you mean StepOutlier_stddev"),
    ("StepOutlir_stddev", 3, "did you mean StepOutlier_stddev"),
    ("StepOutlier_n_outliers", "2.5", "expected an integer"),
    ("Overfit_stop", "maybe", "expected true or false"),
    ("CPUBottleneck_threshold", "-1", "expected a number >= 0"),
])
def test_bad_rule_params_name_the_key(key, value, expected):
    with pytest.raises(UserError) as err:
        validate_rule_params({key: value})
    assert key in str(err.value) and expected in str(err.value)


# --- debugger rules --------------------------------------------------------------------------------

def test_vanishing_gradient():
    rec = healthy_records()
    for row in rec.layers[3:]:
        row["grad_mean_abs"]["conv1.weight"] = 1e-9
    f = assert_fires(rec, "VanishingGradient")
    assert f.steps == [r["step"] for r in rec.layers[3:]] and "conv1.weight" in f.message


def test_exploding_tensor_stops_by_default():
    rec = healthy_records()
    for s in rec.steps[50:]:
        s["loss"] = None  # the collection writes non-finite values as null
    f = assert_fires(rec, "ExplodingTensor")
    assert f.stop and f.steps[0] == 51 and "step 51" in f.message
    assert not findings(rec, ExplodingTensor_stop="false")["ExplodingTensor"].stop


def test_exploding_gradient_norm_without_fp16():
    rec = healthy_records()
    rec.steps[70]["grad_norm"] = None
    assert assert_fires(rec, "ExplodingTensor").steps == [71]
    rec.job["hyperparameters"]["amp"] = "fp16"  # the loss scaler skips such steps on purpose
    assert not findings(rec)["ExplodingTensor"].triggered


def test_loss_not_decreasing_with_zero_lr():
    rec = healthy_records()
    rng = np.random.default_rng(1)
    for s in rec.steps:
        s["loss"] = 1.386 + rng.normal(0, 0.05)
    f = assert_fires(rec, "LossNotDecreasing")
    assert "not 5% below the start" in f.message


def test_loss_not_decreasing_when_loss_rises():
    rec = healthy_records()
    for i, s in enumerate(rec.steps[60:]):
        s["loss"] = 0.6 + 0.02 * i
    f = assert_fires(rec, "LossNotDecreasing")
    assert f.details["rose_at"] and min(f.details["rose_at"]) > 60


def test_loss_plateau_after_progress_is_not_flagged():
    rec = healthy_records()
    rng = np.random.default_rng(2)
    for s in rec.steps[60:]:
        s["loss"] = 0.4 + rng.normal(0, 0.04)
    assert not findings(rec)["LossNotDecreasing"].triggered


def test_long_healthy_run_fires_no_debugger_rule_by_chance():
    """50,000 steps of a converged run: thousands of window comparisons, none a false alarm."""
    rec = healthy_records(epochs=100, steps_per_epoch=500)
    result = findings(rec)
    assert not result["LossNotDecreasing"].triggered, result["LossNotDecreasing"].message
    assert result["StepOutlier"].details["sigma"] and not result["StepOutlier"].triggered


def test_overfit():
    rec = healthy_records(epochs=6)
    for e, row in enumerate(rec.history):
        row["train_loss"] = 1.0 / (e + 1)
        row["valid_loss"] = 0.9 + 0.1 * e
    f = assert_fires(rec, "Overfit")
    assert f.steps[0] == 2  # epoch 2: valid 1.0 vs train 0.5, and the valid loss rose
    assert not findings(rec, Overfit_start_step=10_000)["Overfit"].triggered
    assert findings(rec, Overfit_patience=3)["Overfit"].steps[0] == 4


def test_lagging_but_falling_valid_loss_is_not_overfit():
    """From scratch, eval-mode batch norm lags: valid loss far above train loss, yet falling every epoch."""
    rec = healthy_records()
    for row, (train, valid) in zip(rec.history, [(1.38, 6.7), (1.25, 3.0), (0.98, 1.31)]):
        row.update(train_loss=train, valid_loss=valid)
    assert not findings(rec)["Overfit"].triggered
    rec.history.append({**rec.history[-1], "epoch": 4, "train_loss": 0.7, "valid_loss": 1.4})
    assert findings(rec)["Overfit"].steps == [4]


def test_overtraining():
    rec = healthy_records(epochs=12, steps_per_epoch=10)
    for e, row in enumerate(rec.history):
        row["train_loss"] = max(0.3, 1.2 - 0.3 * e)
        row["valid_loss"] = 0.5
    f = assert_fires(rec, "Overtraining")
    assert "train loss has not improved" in f.message and "valid loss has not improved" in f.message


def test_poor_weight_initialization_variance():
    rec = healthy_records()
    rec.init["activation_variance"]["layer1.0.relu"] = 5e4
    f = assert_fires(rec, "PoorWeightInitialization")
    assert "layer1.0.relu" in f.message


def test_poor_weight_initialization_gradient_spread():
    rec = healthy_records()
    rec.init.update(grad_p5=-1e-5, grad_p95=1e-5)
    assert "spread" in assert_fires(rec, "PoorWeightInitialization").message


def test_poor_weight_initialization_not_judged_on_pretrained_weights():
    rec = healthy_records()
    rec.init["activation_variance"]["layer1.0.relu"] = 5e4
    rec.job["hyperparameters"]["weights"] = "imagenet"
    f = findings(rec)["PoorWeightInitialization"]
    assert not f.triggered and not f.applicable and "pretrained" in f.message


def test_weight_update_ratio():
    rec = healthy_records()
    for row in rec.layers:
        row["update_ratio"] = {k: 0.0 for k in row["update_ratio"]}  # lr = 0
    assert "< 1e-08" in assert_fires(rec, "WeightUpdateRatio").message
    rec = healthy_records()
    rec.layers[2]["update_ratio"]["fc.weight"] = 50.0
    assert assert_fires(rec, "WeightUpdateRatio").steps == [rec.layers[2]["step"]]


def test_weight_update_ratio_ignores_zero_initialised_weights():
    rec = healthy_records()
    assert rec.layers[0]["step"] == 1
    rec.layers[0]["update_ratio"]["bn1.bias"] = 1e-5 * 8 / 1e-9  # zero before step 1: ||dw|| / (0 + 1e-9)
    assert not findings(rec)["WeightUpdateRatio"].triggered
    rec.layers[1]["update_ratio"]["bn1.bias"] = 50.0
    assert findings(rec)["WeightUpdateRatio"].steps == [rec.layers[1]["step"]]


def test_class_imbalance():
    rec = healthy_records()
    rec.dataset["counts"]["train"] = [400, 20, 20, 20]
    f = assert_fires(rec, "ClassImbalance")
    assert "20x" in f.message and "a 400" in f.message


def test_class_misprediction_needs_enough_samples():
    rec = healthy_records()
    rec.confusion = [[150, 0, 0, 0], [140, 10, 0, 0], [0, 0, 150, 0], [0, 0, 0, 150]]
    assert "mispredicted" in assert_fires(rec, "ClassImbalance").message
    assert not findings(rec, ClassImbalance_samples=10_000)["ClassImbalance"].triggered


def test_dead_relu():
    rec = healthy_records()
    for row in rec.layers[5:]:
        row["relu_active"]["layer2.0.relu"] = [0.0] * 12 + [0.4] * 4
    f = assert_fires(rec, "DeadRelu")
    assert "layer2.0.relu" in f.message and len(f.steps) == len(rec.layers) - 5


# --- profiler rules --------------------------------------------------------------------------------

def _slow(rec: Records, steps: list[int], component: str, seconds: float) -> None:
    for s in rec.steps:
        if s["step"] in steps:
            s[component] += seconds
            s["total"] += seconds


def test_step_outlier_names_the_slow_component():
    rec = healthy_records()
    data_slow, backward_slow = list(range(20, 110, 8)), [33, 66, 99]
    _slow(rec, data_slow, "data", 0.5)
    _slow(rec, backward_slow, "backward", 0.4)
    f = assert_fires(rec, "StepOutlier")
    assert set(f.details["robust"]) == set(data_slow + backward_slow)
    causes = {int(k): v for k, v in f.details["cause"].items()}
    assert all(causes[s] == "data" for s in data_slow) and all(causes[s] == "backward" for s in backward_slow)
    assert "data wait 12" in f.message and "backward 3" in f.message


def test_step_outlier_robust_test_beats_mean_sigma():
    """Four long stalls inflate sigma so much that mean+3σ misses half; median+k·MAD finds all."""
    rec = healthy_records()
    _slow(rec, [30, 60], "forward", 5.0)
    _slow(rec, [45, 90], "forward", 0.6)
    f = findings(rec, StepOutlier_n_outliers=1)["StepOutlier"]
    assert set(f.details["robust"]) == {30, 45, 60, 90}
    assert set(f.details["sigma"]) == {30, 60}
    assert f.triggered


def test_step_outlier_leaves_out_the_profiler_window():
    rec = healthy_records()
    _slow(rec, [40, 41, 42], "backward", 0.3)
    rec.profiler_window = {"steps": [40, 41, 42], "device": "cpu"}
    assert findings(rec, StepOutlier_n_outliers=0)["StepOutlier"].details["robust"] == []
    rec.profiler_window = {}
    assert findings(rec, StepOutlier_n_outliers=0)["StepOutlier"].details["robust"] == [40, 41, 42]
    for s in rec.steps[39:42]:  # the collection's own flags say the same
        s["profiled" if s["step"] < 42 else "sampled"] = True
    assert findings(rec, StepOutlier_n_outliers=0)["StepOutlier"].details["robust"] == []


def test_step_outlier_quiet_below_n_outliers():
    rec = healthy_records()
    _slow(rec, [30, 60], "data", 1.0)
    f = findings(rec)["StepOutlier"]
    assert not f.triggered and f.count == 2


def test_input_bound_loader_fires_cpu_bottleneck_and_dataloader():
    rec = healthy_records()
    for s in rec.steps:
        s["data"] += 0.2
        s["total"] += 0.2
    cpu = assert_fires(rec, "CPUBottleneck")
    assert "input-bound" in cpu.message and cpu.details["data_wait_share"] > 0.6
    assert "too few loader workers" in assert_fires(rec, "Dataloader").message
    assert not findings(rec)["IOBottleneck"].triggered
    assert verdict(rec, evaluate_rules(rec))["bound"] == "input"


def test_input_bound_with_high_iowait_is_io_bottleneck():
    rec = healthy_records()
    for s in rec.steps:
        s["data"] += 0.2
        s["total"] += 0.2
    for s in rec.system:
        s["iowait"] = 70.0
    assert "storage-bound" in assert_fires(rec, "IOBottleneck").message
    assert not findings(rec)["CPUBottleneck"].triggered


def test_dataloader_too_many_workers():
    rec = healthy_records()
    rec.loader["num_workers"] = 16
    assert "too many" in assert_fires(rec, "Dataloader").message


def _gpu_job(rec: Records, util, mem_used, n: int = 1200) -> Records:
    t0 = rec.steps[0]["t"] - 0.2
    rec.system = [{"t": t0 + i * 0.5, "cpu": [30.0, 30.0], "mem_percent": 40.0, "rss_bytes": int(9e8), "iowait": 0.0,
                   "gpus": [{"util": util(i), "mem_used_bytes": mem_used(i), "mem_total_bytes": 80 * 2**30, "power_w": 200.0}]}
                  for i in range(n)]
    for i, s in enumerate(rec.steps):
        s["t"] = t0 + (i + 1) * n * 0.5 / len(rec.steps)
    rec.loader["device"] = "cuda:0"
    return rec


def test_low_gpu_utilization_and_batch_size():
    rec = _gpu_job(healthy_records(), lambda i: 20.0 + (i % 7), lambda i: 10 * 2**30)
    assert "low or fluctuating" in assert_fires(rec, "LowGPUUtilization").message
    assert assert_fires(rec, "BatchSize").message.startswith("batch could be larger")
    busy = _gpu_job(healthy_records(), lambda i: 95.0, lambda i: 70 * 2**30)
    result = findings(busy)
    assert not result["LowGPUUtilization"].triggered and not result["BatchSize"].triggered
    assert result["LowGPUUtilization"].applicable


def test_gpu_memory_increase_from_allocator_peaks():
    rec = _gpu_job(healthy_records(), lambda i: 95.0, lambda i: 40 * 2**30)
    for i, s in enumerate(rec.steps):
        s["cuda_peak_bytes"] = int(10 * 2**30 + (i > 80) * 30 * 2**30)
    f = assert_fires(rec, "GPUMemoryIncrease", GPUMemoryIncrease_patience=20)
    assert f.steps[0] > 80
    assert not findings(rec)["GPUMemoryIncrease"].triggered  # SageMaker's patience: 1000 points


def test_max_initialization_time():
    rec = healthy_records()
    shift = 25 * 60
    for s in rec.steps:
        s["t"] += shift
    f = assert_fires(rec, "MaxInitializationTime")
    assert f.details["initialization"] > 20 * 60
    assert not findings(rec, MaxInitializationTime_threshold=30)["MaxInitializationTime"].triggered


def test_no_step_after_threshold():
    rec = healthy_records()
    rec.steps, rec.timeline = [], [{"event": "process_start", "t": 0.0}, {"event": "data_scan_start", "t": 1300.0}]
    assert "no training step" in assert_fires(rec, "MaxInitializationTime").message


def test_straggler():
    rec = healthy_records()
    rec.ranks = [{"epoch": e, "rank": r, "p50": 0.1 * (1.5 if r == 3 else 1.0), "mean": 0.1, "max": 0.2, "steps": 40}
                 for e in (1, 2) for r in range(4)]
    assert "rank 3 +50%" in assert_fires(rec, "Straggler").message
    rec.ranks = [dict(r, p50=0.1) for r in rec.ranks]
    assert not findings(rec)["Straggler"].triggered


def test_host_memory_increase():
    rec = healthy_records()
    n = len(rec.system)
    for i, s in enumerate(rec.system):
        s["rss_bytes"] = int(9e8 + i / n * 8e8)
    assert "resident memory" in assert_fires(rec, "HostMemoryIncrease").message


# --- loading ---------------------------------------------------------------------------------------

def test_load_records_tolerates_torn_and_missing_files(tmp_path):
    rec = healthy_records()
    write_raw(rec, tmp_path)
    raw = tmp_path / RAW_DIR
    with open(raw / "steps.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 121, "t": 1')  # killed mid-line
    (raw / "layers.jsonl").unlink()
    loaded = load_records(tmp_path)
    assert len(loaded.steps) == len(rec.steps) and loaded.layers == []
    assert "layers.jsonl" in loaded.missing and "ranks.json" not in loaded.missing
    result = {f.rule: f for f in evaluate_rules(loaded)}
    assert not result["DeadRelu"].applicable and not any(f.triggered for f in result.values())


def test_rules_import_no_torch():
    code = "import sys, imgcls.insights.rules, imgcls.insights.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
