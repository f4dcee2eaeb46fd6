"""Trials per minute: `imgcls tune` (warm forked trials) against a plain loop launching `imgcls train` per trial.

Both run the same trials (the hyperparameters the study drew, replayed by the loop) one at a time
with the same thread count, on the same generated dataset, so the difference is what a trial costs
besides its epochs: interpreter start, imports and teardown (saved by the warm fork), and what a
study's trials do not write (checkpoints nobody resumes, an insights page drawn on demand). The same
loop with those trial settings shows each share. `imgcls tune --no-fork` is shown too (the same
controller, a fresh process per trial).

    uv run python bench/tuning_throughput.py                      # small: resnet18, 32 px, 2 epochs, 6 trials
    uv run python bench/tuning_throughput.py --backbone resnet50 --image-size 64 --trials 4
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402

from imgcls_client.study import TRIAL_SETTINGS  # noqa: E402

SPEC = """
objective: {{metric: best_valid_loss}}
parameters:
  lr: {{type: continuous, min: 0.0001, max: 0.01, scale: log}}
  batch-size: {{type: categorical, values: [8, 16]}}
static: {{epochs: {epochs}, backbone: {backbone}, image-size: {image_size}, weights: none, workers: 0, amp: off}}
strategy: Random
seed: 3
budget: {{max_trials: {trials}, max_parallel: 1}}
"""


def run(cmd: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})  # noqa: S603 - our own imgcls commands, timed
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4 if os.environ.get("BENCH_SHORT") == "1" else 6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=16, help="training images per class (4 classes)")
    ap.add_argument("--threads", type=int, default=0, help="threads per trial, both ways (default: all cores)")
    ap.add_argument("--no-fork-too", action="store_true", help="also time `imgcls tune --no-fork`")
    args = ap.parse_args()

    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "imgcls", "make-sample", str(tmp / "data"), "--classes", "4",  # noqa: S603 - imgcls make-sample
                        "--per-class", str(args.images), "6", "6", "--image-size", "48"], check=True, stdout=subprocess.DEVNULL)
        spec = tmp / "spec.yaml"
        spec.write_text(SPEC.format(epochs=args.epochs, backbone=args.backbone, image_size=args.image_size, trials=args.trials))
        print(f"{args.trials} trials of {args.backbone}, {args.image_size} px, {args.epochs} epochs, {4 * args.images} training images, "
              f"one at a time, {threads} threads each; load average before: {os.getloadavg()[0]:.1f}", flush=True)

        timings = {}
        tune = [sys.executable, "-m", "imgcls", "tune", "--data", str(tmp / "data"), "--spec", str(spec)]
        pin = {"OMP_NUM_THREADS": str(threads)}
        timings["imgcls tune (forked warm trials)"] = run([*tune, "--out", str(tmp / "fork")], env=pin)
        if args.no_fork_too:
            timings["imgcls tune --no-fork"] = run([*tune, "--out", str(tmp / "nofork"), "--no-fork"], env=pin)

        # the plain loop: the same hyperparameters, one `imgcls train` process per trial; then the same loop
        # with the settings a study gives its trials (no checkpoints, report drawn on demand), to show
        # what the warm fork saves on its own
        with open(tmp / "fork" / "results.csv") as f:
            trials = [row for row in csv.DictReader(f)]
        fixed = {"epochs": args.epochs, "backbone": args.backbone, "image-size": args.image_size, "weights": "none", "workers": 0, "amp": "off"}
        loops = {"plain loop of `imgcls train`": {}, "loop with the trial settings": TRIAL_SETTINGS}
        for i, (name, settings) in enumerate(loops.items()):
            started = time.perf_counter()
            for row in trials:
                hps = {**settings, **fixed, "lr": row["lr"], "batch-size": row["batch-size"]}
                out = tmp / f"loop{i}" / row["trial"]
                run([sys.executable, "-m", "imgcls", "train", "--data", str(tmp / "data"), "--model-dir", str(out / "model"),
                     "--output-dir", str(out / "output"), *[a for k, v in hps.items() for a in (f"--{k}", str(v))]],
                    env={"OMP_NUM_THREADS": str(threads)})
            timings[name] = time.perf_counter() - started
        epochs = json.dumps([int(r["epochs"] or 0) for r in trials])

    baseline = timings["plain loop of `imgcls train`"]
    print(f"epochs run per trial: {epochs}; load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'':34s} {'wall s':>8s} {'s/trial':>8s} {'trials/min':>10s} {'vs loop':>8s}")
    for name, seconds in timings.items():
        print(f"{name:34s} {seconds:8.1f} {seconds / len(trials):8.1f} {60 * len(trials) / seconds:10.2f} {baseline / seconds:7.2f}x")
    write_ratios("tuning_throughput", f"{len(trials)} trials of {args.backbone}, {args.image_size} px, {args.epochs} epochs",
                 [(f"trials/min, {name} / plain loop", baseline / seconds, ">= 2") for name, seconds in timings.items()
                  if name.startswith("imgcls tune")])


if __name__ == "__main__":
    main()
