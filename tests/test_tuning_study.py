"""A real local study: trials are real training runs; one is pruned, one fails, and the controller survives a SIGKILL."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from imgcls.hyperparams import parse_hyperparameters
from imgcls.sample_data import make_sample_dataset

# Grid order is the spec's: (1e-6, none) learns nothing but stays near ln(4); (1e-6, missing) fails at the
# weights; (0.05, none) blows the validation loss up in its first epoch, worse than the running average
# of the first trial, so SageMaker's median rule stops it; (0.05, missing) fails again.
SPEC = """
objective: {{metric: valid_loss, direction: minimize}}
parameters:
  lr: {{type: categorical, values: [0.000001, 0.05]}}
  weights: {{type: categorical, values: [none, {missing}]}}
static: {{epochs: 3, backbone: resnet18, image-size: 32, batch-size: 16, workers: 0, amp: off, seed: 1}}
strategy: Grid
early_stopping: Auto
"""


def _tune(data: Path, spec: Path, out: Path, *options: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgcls", "tune", "--data", str(data), "--spec", str(spec), "--out", str(out), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_study_prunes_records_failures_and_resumes_after_sigkill(tmp_path):
    data = make_sample_dataset(tmp_path / "data", num_classes=4, per_class=(16, 6, 6), image_size=40)
    missing = tmp_path / "no-such-weights.pth"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(missing=missing))
    out = tmp_path / "study"

    # 1. kill the controller -9 while the first trial is between epochs
    first = _tune(data, spec, out)
    log0 = out / "trials" / "0000" / "log.txt"
    _wait_for(lambda: log0.exists() and "epoch=1/3" in log0.read_text(), 300, "the first trial's first epoch")
    family = psutil.Process(first.pid).children(recursive=True)
    assert family, "the controller has no trial processes"
    first.send_signal(signal.SIGKILL)
    first.wait()
    # the trial starter and the trial die with it (no orphan keeps training into the study folder)
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.pid for p in alive]

    # 2. the same command resumes, re-runs the interrupted trial and finishes the grid
    second = _tune(data, spec, out)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "1 interrupted trial(s) will run again" in output
    assert "re-run of interrupted trial 0" in output

    rows = list(csv.DictReader((out / "results.csv").open()))
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    interrupted = rows[0]
    assert interrupted["status"] == "INTERRUPTED" and interrupted["reason"].startswith("interrupted")
    rerun = [r for r in by_status["COMPLETE"] if r["lr"] == "1e-06" and r["weights"] == "none"]
    assert len(rerun) == 1 and rerun[0]["trial"] != "0" and rerun[0]["epochs"] == "3"
    failed = [r for r in by_status["FAIL"] if r is not interrupted]
    assert len(failed) == 2 and all(r["weights"] == str(missing) for r in failed)
    # the reason is the trial's own output/failure
    failure_file = out / "trials" / f"{int(failed[0]['trial']):04d}" / "output" / "failure"
    assert failed[0]["reason"] == failure_file.read_text().strip() and str(missing) in failed[0]["reason"]
    pruned = by_status["PRUNED"]
    assert len(pruned) == 1 and pruned[0]["lr"] == "0.05" and int(pruned[0]["epochs"]) < 3
    assert len(rows) == 5  # 4 grid points + the interrupted attempt

    # objective = the last valid_loss the regexes matched in the trial's log (SageMaker's rule)
    log = (out / "trials" / f"{int(rerun[0]['trial']):04d}" / "log.txt").read_text()
    last_epoch_line = [line for line in log.splitlines() if line.startswith("epoch=3/3 ")][0]
    assert float(rerun[0]["valid_loss"]) == float(re.search(r" valid_loss=(\S+)", last_epoch_line).group(1))
    # each trial trained in its own folders: the re-run did not resume the killed trial's checkpoint
    assert "resuming from checkpoint" not in log
    # trials are never resumed, so they write no checkpoint; their reports are drawn on demand, the best one's at the end
    assert not list((out / "trials").glob("*/output/checkpoints/*"))
    best_output = out / "trials" / f"{int(rerun[0]['trial']):04d}" / "output" / "data"
    assert (best_output / "report.html").is_file() and f"best trial's insights report: {best_output / 'report.html'}" in output
    assert [p.parent.parent.parent.name for p in (out / "trials").glob("*/output/data/report.html")] == [best_output.parent.parent.name]
    # a pruned trial still ran its rules (SIGTERM stops training at a step's end, then the hooks finish)
    assert (out / "trials" / f"{int(by_status['PRUNED'][0]['trial']):04d}" / "output" / "data" / "insights.json").is_file()

    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best["lr"] == "1e-06" and best["weights"] == "none" and best["amp"] == "off"
    parse_hyperparameters(best)  # what train accepts as it is
    table = (out / "results.md").read_text()
    assert "PRUNED" in table and "| trial | lr | weights | valid_loss | status | epochs | seconds | reason |" in table
    for png in ("objective.png", "parameter_slices.png", "curves.png"):
        assert (out / png).stat().st_size > 10_000
    # the interrupted and the pruned trial's processes are gone, and nothing else was left running
    assert not [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# ---- resume: a study stopped half way and resumed to its budget repeats nothing and counts right

# One continuous parameter (values never repeat by chance) and the smallest trials that still train.
RESUME_SPEC = """
objective: {{metric: valid_loss, direction: minimize}}
parameters:
  lr: {{type: continuous, min: 0.0001, max: 0.01, scale: log}}
static: {{epochs: {epochs}, backbone: resnet18, weights: none, image-size: 32, batch-size: 16, workers: 0, amp: off, seed: 1,
          insights: off}}
strategy: {strategy}
budget: {{max_trials: 4}}
seed: 7
"""


def _resume_study(tmp_path, strategy: str, epochs: int) -> tuple[Path, Path, Path]:
    data = make_sample_dataset(tmp_path / "data", num_classes=2, per_class=(8, 4, 4), image_size=32)
    spec = tmp_path / "spec.yaml"
    spec.write_text(RESUME_SPEC.format(strategy=strategy, epochs=epochs))
    return data, spec, tmp_path / "study"


def _kill_controller(proc: subprocess.Popen) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.pid for p in alive]


def _summary(output: str, out: Path) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"study {out}: "))


def _finish(data: Path, spec: Path, out: Path) -> tuple[str, list[dict]]:
    resumed = _tune(data, spec, out)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    return output, list(csv.DictReader((out / "results.csv").open()))


@pytest.mark.slow
def test_a_resumed_random_study_records_a_trial_that_finished_unseen_and_repeats_no_values(tmp_path):
    data, spec, out = _resume_study(tmp_path, "Random", epochs=1)
    # half the budget; the controller is frozen while its last trial runs to the end, then killed:
    # the trial finished, the study never heard of it
    first = _tune(data, spec, out, "--max-trials", "2")
    _wait_for(lambda: (out / "trials" / "0001" / "log.txt").exists(), 300, "the second trial's start")
    first.send_signal(signal.SIGSTOP)
    model_config = out / "trials" / "0001" / "model" / "model_config.json"
    _wait_for(lambda: model_config.exists() and len(psutil.Process(first.pid).children(recursive=True)) == 1, 300,
              "the second trial to finish while its controller is stopped")
    _kill_controller(first)

    output, rows = _finish(data, spec, out)
    assert "re-run of interrupted" not in output and "trial 1 had finished" in output
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"] and {r["status"] for r in rows} == {"COMPLETE"}, rows
    log = (out / "trials" / "0001" / "log.txt").read_text()
    assert float(rows[1]["valid_loss"]) == float(re.findall(r" valid_loss=(\S+)", log)[-1]) and rows[1]["epochs"] == "1"
    assert len({r["lr"] for r in rows}) == 4, [r["lr"] for r in rows]  # the resumed sampler did not start its stream again
    assert _summary(output, out).startswith(f"study {out}: 4 trials (4 complete) in ")
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]


@pytest.mark.slow
def test_a_hyperband_study_killed_mid_trial_reruns_it_once_without_counting_it_and_repeats_no_values(tmp_path):
    data, spec, out = _resume_study(tmp_path, "Hyperband", epochs=2)
    first = _tune(data, spec, out)
    log1 = out / "trials" / "0001" / "log.txt"
    _wait_for(log1.exists, 300, "the second trial's start")
    _kill_controller(first)  # trial 1 had not finished an epoch: it really is interrupted

    output, rows = _finish(data, spec, out)
    assert "1 interrupted trial(s) will run again" in output and "re-run of interrupted trial 1" in output
    interrupted = [r for r in rows if r["status"] == "INTERRUPTED"]
    counted = [r for r in rows if r["status"] != "INTERRUPTED"]
    assert [r["trial"] for r in interrupted] == ["1"] and interrupted[0]["reason"].startswith("interrupted"), rows
    assert len(counted) == 4 and {r["status"] for r in counted} <= {"COMPLETE", "PRUNED"}, rows
    assert len({r["lr"] for r in counted}) == 4, [r["lr"] for r in counted]
    assert interrupted[0]["lr"] in {r["lr"] for r in counted}  # run again with its values, once
    summary = _summary(output, out)
    counts = re.match(rf"study {re.escape(str(out))}: 4 trials \(([^)]*)\)", summary)
    assert counts and sum(int(n) for n in re.findall(r"(\d+) \w+", counts.group(1))) == 4, summary
    assert "1 interrupted attempt" in summary, summary
    table = (out / "results.md").read_text()
    assert "; 4 trials (" in table and "1 interrupted attempt" in table


# The trials a controller asks for, one session per process, as `imgcls tune` would (no training needed).
ASK_SESSION = """
import json, sys
from imgcls_client.spec import load_spec
from imgcls_client.study import Study, distributions
spec = load_spec(sys.argv[1])
study = Study(spec, data=sys.argv[2], out=sys.argv[3])
for _ in range(int(sys.argv[4])):
    trial = study.study.ask(distributions(spec))
    study.study.tell(trial, trial.params["lr"])
    print(json.dumps(trial.params))
"""


@pytest.mark.parametrize("strategy", ["Random", "Bayesian", "Hyperband"])
def test_a_seeded_sampler_does_not_start_its_stream_again_on_resume(tmp_path, strategy):
    spec = tmp_path / "spec.yaml"
    spec.write_text(RESUME_SPEC.format(strategy=strategy, epochs=2).replace("max_trials: 4", "max_trials: 40"))
    data = tmp_path / "data"
    data.mkdir()
    proposed = []
    for _ in range(2):  # two controller sessions on the same study folder
        done = subprocess.run([sys.executable, "-c", ASK_SESSION, str(spec), str(data), str(tmp_path / "study"), "3"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        proposed += [json.loads(line)["lr"] for line in done.stdout.splitlines()]
    assert len(proposed) == 6 and len(set(proposed)) == 6, proposed
