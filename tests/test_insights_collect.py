"""Insight collection in real tiny trainings: the raw files of FORMAT.md, a stopped job keeps its data,
the off switch, rule overrides as hyperparameters, and the smdebug bridge through the real toolkit."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from imgcls import hooks as loop_hooks
from imgcls.checkpoint import TrainingInterrupted
from imgcls.errors import UserError
from imgcls.hyperparams import parse_hyperparameters
from imgcls.insights.collect import insight_hooks
from imgcls.sample_data import make_sample_dataset
from imgcls.train import JobPaths, train
from test_sagemaker_contract import make_job, run_toolkit

TINY = {"backbone": "resnet18", "weights": "none", "image-size": 32, "batch-size": 8, "workers": 0, "warmup-epochs": 0,
        "log-interval": 5, "insights-sample-interval": 4, "insights-init-steps": 3, "profiler-steps": 2}
STEP_KEYS = {"epoch", "step", "t", "data", "h2d", "forward", "backward", "optimizer", "other", "total", "loss", "grad_norm",
             "lr", "batch", "cuda_peak_bytes"}
SYSTEM_KEYS = {"t", "cpu", "mem_percent", "rss_bytes", "iowait", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes",
               "net_tx_bytes", "gpus"}
LOADER_KEYS = {"num_workers", "pin_memory", "prefetch_factor", "persistent_workers", "batch_size", "cores", "device"}
PER_CLASS = (20, 6, 3)  # 4 classes: 80 train images = 10 steps of 8 per epoch


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("collect") / "shapes", num_classes=4, per_class=PER_CLASS, image_size=40)


def run_job(out: Path, dataset: Path, **hyperparameters):
    hp = parse_hyperparameters({**TINY, **hyperparameters})
    torch.set_num_threads(2)
    paths = JobPaths(model_dir=out / "model", output_data_dir=out / "data", checkpoint_dir=out / "checkpoints",
                     tensorboard_dir=None, channels={"train": dataset / "train", "valid": dataset / "valid", "test": dataset / "test"})
    return train(hp, paths)


def raw(out: Path) -> Path:
    return out / "data" / "insights" / "raw"


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def job(tmp_path_factory, shapes) -> Path:
    out = tmp_path_factory.mktemp("job")
    run_job(out, shapes, epochs=2, StepOutlier_stddev="4")
    return out


def test_every_step_is_recorded_with_its_time_split(job):
    steps = jsonl(raw(job) / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 21))
    assert [s["epoch"] for s in steps] == [1] * 10 + [2] * 10
    for s in steps:
        assert STEP_KEYS <= set(s), STEP_KEYS - set(s)
        parts = sum(s[k] for k in ("data", "h2d", "forward", "backward", "optimizer", "other"))
        assert parts == pytest.approx(s["total"], rel=1e-3, abs=1e-5)
        assert s["forward"] > 0 and s["backward"] > 0 and s["optimizer"] > 0 and s["other"] >= 0
        assert math.isfinite(s["loss"]) and s["grad_norm"] > 0 and s["batch"] == 8 and s["cuda_peak_bytes"] is None
    assert all(a["t"] < b["t"] for a, b in zip(steps, steps[1:]))
    assert steps[0]["loss"] == pytest.approx(math.log(4), rel=0.35)  # 4 classes from scratch start near chance
    # the lr each step used: warmup-epochs 0, so the peak first, then cosine down to nearly 0
    lrs = [s["lr"] for s in steps]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-3 * 0.01
    assert sum(1 for s in steps if s.get("profiled")) == 2


def test_sampled_steps_hold_per_layer_statistics(job):
    rows = jsonl(raw(job) / "layers.jsonl")
    assert [r["step"] for r in rows] == [1, 4, 8, 12, 16, 20]
    steps = {s["step"]: s for s in jsonl(raw(job) / "steps.jsonl")}
    model = torch.load(job / "model" / "model.pt", weights_only=True)
    for r in rows:
        assert set(r) == {"step", "grad_norm", "grad_mean_abs", "update_ratio", "relu_active"}
        assert set(r["grad_norm"]) == set(r["grad_mean_abs"]) == set(r["update_ratio"]) and "fc.weight" in r["grad_norm"]
        # the per-layer norms and the global norm are two computations of one quantity
        assert math.sqrt(sum(v * v for v in r["grad_norm"].values())) == pytest.approx(steps[r["step"]]["grad_norm"], rel=1e-4)
        if r["step"] == 1:  # BatchNorm biases start at 0: ||dw|| / (0 + 1e-9) is huge, and only there
            huge = {k for k, v in r["update_ratio"].items() if not 0 < v < 1}
            assert huge and all(k.endswith(".bias") and k != "fc.bias" and v > 1e6 for k, v in r["update_ratio"].items() if k in huge)
        else:
            assert all(0 < v < 1 for v in r["update_ratio"].values())
        # torchvision's BasicBlock calls its one ReLU twice: both calls are there, one value per channel
        assert len(r["relu_active"]["layer4.1.relu#2"]) == model["layer4.1.bn2.weight"].numel() == 512
        assert all(0.0 <= f <= 1.0 for values in r["relu_active"].values() for f in values)


def test_first_steps_and_dataset_and_loader(job, shapes):
    init = json.loads((raw(job) / "init.json").read_text())
    assert init["steps"] == 3 and len(init["losses"]) == 3
    assert init["grad_p5"] < 0 < init["grad_p95"] and len(init["grad_p95_per_step"]) == 3
    assert {"relu", "layer1.0.relu", "layer1.0.relu#2"} <= set(init["activation_variance"])
    assert init["activation_variance"]["relu"] > 0

    dataset = json.loads((raw(job) / "dataset.json").read_text())
    assert dataset["class_names"] == ["Red_circle", "Blue_square", "Green_triangle", "Yellow_cross"]
    assert dataset["counts"] == {"train": [PER_CLASS[0]] * 4, "valid": [PER_CLASS[1]] * 4, "test": [PER_CLASS[2]] * 4}

    loader = json.loads((raw(job) / "loader.json").read_text())
    assert LOADER_KEYS <= set(loader) and loader["num_workers"] == 0 and loader["batch_size"] == 8 and loader["device"] == "cpu"

    job_info = json.loads((raw(job) / "job.json").read_text())
    assert job_info["rule_params"] == {"StepOutlier_stddev": 4.0} and job_info["hyperparameters"]["epochs"] == 2


def test_system_timeline_and_profiler(job):
    samples = jsonl(raw(job) / "system.jsonl")
    assert samples and all(SYSTEM_KEYS <= set(s) for s in samples)
    assert len(samples[-1]["cpu"]) == os.cpu_count() and samples[-1]["rss_bytes"] > 100e6 and samples[-1]["gpus"] == []

    events = json.loads((raw(job) / "timeline.json").read_text())
    names = [e["event"] for e in events]
    for earlier, later in [("process_start", "data_scan_start"), ("data_scan_end", "model_ready"), ("model_ready", "first_batch"),
                           ("first_batch", "first_step"), ("first_step", "training_end")]:
        assert names.index(earlier) < names.index(later), (earlier, later)
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2]
    assert names.count("evaluation_start") == 3 and names.count("checkpoint") == 2
    assert events[-1]["event"] == "end" and events[-1]["status"] == "completed"
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)

    prof = raw(job) / "profiler"
    trace = json.loads((prof / "trace.json").read_text())
    assert trace["traceEvents"]
    ops = json.loads((prof / "top_ops.json").read_text())
    assert ops and set(ops[0]) == {"name", "self_cpu_us", "self_cuda_us", "calls", "share"}
    assert any("conv" in op["name"] for op in ops[:10]) and sum(op["share"] for op in ops) <= 1.0 + 1e-9
    assert json.loads((prof / "window.json").read_text())["steps"] == [s["step"] for s in jsonl(raw(job) / "steps.jsonl") if s.get("profiled")]
    assert (job / "data" / "report.html").is_file() and (job / "data" / "insights.json").is_file()


def test_a_stopped_job_keeps_history_raw_data_and_a_report(tmp_path, shapes, monkeypatch):
    """A real SIGTERM (as StopTrainingJob sends) right after epoch 1: the job stops in epoch 2 and keeps everything."""
    after_epoch = loop_hooks.MetricLines.after_epoch

    def and_then_sigterm(self, loop):
        after_epoch(self, loop)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop_hooks.MetricLines, "after_epoch", and_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        run_job(tmp_path, shapes, epochs=3, **{"profiler-steps": 0})
    assert not (tmp_path / "model" / "model.pt").exists()
    assert [row["epoch"] for row in json.loads((tmp_path / "data" / "history.json").read_text())] == [1]
    assert (tmp_path / "data" / "history.csv").read_text().count("\n") == 2
    steps = jsonl(raw(tmp_path) / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 12))  # epoch 1, and the step of epoch 2 the signal ended
    end = json.loads((raw(tmp_path) / "timeline.json").read_text())[-1]
    assert end["event"] == "end" and end["status"] == "stopped" and "stopped by signal at epoch 2" in end["reason"]
    assert jsonl(raw(tmp_path) / "system.jsonl")
    facts = json.loads((tmp_path / "data" / "insights.json").read_text())
    assert {r["rule"] for r in facts["rules"]} >= {"ExplodingTensor", "StepOutlier"}


def test_off_switch_writes_nothing_and_nothing_listens(tmp_path, shapes):
    hp = parse_hyperparameters({**TINY, "insights": "false"})
    paths = JobPaths(model_dir=tmp_path / "model", output_data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "ck",
                     tensorboard_dir=None, channels={"train": shapes})
    assert insight_hooks(hp, paths) == ([], [])  # no listener: no module hook, no sampler, no step record
    run_job(tmp_path, shapes, epochs=1, insights="false")
    assert (tmp_path / "model" / "model.pt").is_file() and (tmp_path / "data" / "history.json").is_file()
    assert not (tmp_path / "data" / "insights").exists() and not (tmp_path / "data" / "report.html").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("insights")]


def test_rule_overrides_are_hyperparameters():
    hp = parse_hyperparameters({"epochs": "2", "StepOutlier_stddev": "4", "ExplodingTensor_stop": "false"})
    assert hp.rule_params == {"StepOutlier_stddev": 4.0, "ExplodingTensor_stop": False}
    assert hp.as_dict()["StepOutlier_stddev"] == 4.0 and parse_hyperparameters(hp.as_dict()) == hp  # round trip (checkpoint, config)
    with pytest.raises(UserError, match="StepOutlir_stddev.*did you mean StepOutlier_stddev"):
        parse_hyperparameters({"StepOutlir_stddev": "4"})
    with pytest.raises(UserError, match="StepOutlier_stddev"):
        parse_hyperparameters({"StepOutlier_stddev": "lots"})


def test_smdebug_hook_config_from_sagemaker_saves_tensors_that_read_back(tmp_path, sample_dataset):
    """A Debugger user's DebuggerHookConfig, as SageMaker writes it, through the real toolkit."""
    tensors = tmp_path / "tensors"
    base = make_job(tmp_path / "ml", {"train": sample_dataset}, {k: str(v) for k, v in {**TINY, "epochs": 1, "profiler-steps": 0}.items()})
    (base / "input" / "config" / "debughookconfig.json").write_text(json.dumps({
        "LocalPath": str(tensors), "S3OutputPath": "s3://bucket/debug-output",
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "losses"}, {"CollectionName": "gradients"}]}))
    proc = run_toolkit(base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smdebug hook registered" in proc.stderr

    from smdebug.trials import create_trial
    trial = create_trial(str(tensors))
    steps = trial.steps()
    assert steps and steps[0] == 0 and all(s % 2 == 0 for s in steps)  # save_interval 2
    losses = trial.tensor_names(collection="losses")
    assert losses
    assert math.isfinite(float(trial.tensor(losses[0]).value(steps[0])))
    grads = trial.tensor_names(collection="gradients")
    assert any("fc.weight" in name for name in grads)
    assert trial.tensor([n for n in grads if "fc.weight" in n][0]).value(steps[0]).shape == (4, 512)


def test_report_later_runs_the_rules_and_imgcls_report_draws_the_page(tmp_path, shapes, caplog):
    """`insights-report off`: the page is not drawn at the end (local tuning trials), the rules still
    speak and insights.json holds their findings; `imgcls report DIR` draws the same page later."""
    from imgcls.insights.report import main as report_main
    with caplog.at_level("INFO"):
        run_job(tmp_path, shapes, epochs=1, **{"insights-report": "off", "profiler-steps": 0})
    data = tmp_path / "data"
    assert not (data / "report.html").exists()
    facts = json.loads((data / "insights.json").read_text())
    assert {r["rule"] for r in facts["rules"]} >= {"ExplodingTensor", "StepOutlier", "LowGPUUtilization"}
    assert facts["verdict"]["headline"]
    assert f"imgcls report {data}" in caplog.text
    assert report_main([str(data)]) == 0
    page = (data / "report.html").read_text()
    assert "<h2 id=\"gradients\">" in page and "data:image/png;base64," in page
