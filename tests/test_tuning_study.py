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


def _tune(data: Path, spec: Path, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgcls", "tune", "--data", str(data), "--spec", str(spec), "--out", str(out)],
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
    assert interrupted["status"] == "FAIL" and interrupted["reason"].startswith("interrupted")
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
