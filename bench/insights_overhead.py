"""Cost of the built-in training insights: the same job with `insights=false` and `insights=true`, side by side.

Both runs are real `imgcls.train.train` jobs on the same generated images, interleaved in rounds
(off/on, then on/off, ...) so that load from other programs hits both alike. A listener added last
times the training steps only: from each epoch's start to its last step, every listener's work
on every step included (validation, checkpoints and the end-of-job report are not steps). Process
CPU time is the primary figure (it counts the sampler thread too; wall time on a shared machine
swings by tens of percent); wall time and the whole job's time are printed beside it.

Defaults are the image's (sample every 50 steps, 10 init steps, a 3-step profiler window), and
the job is long enough that sampled steps, the init steps and the profiler window fall inside it.

    uv run python bench/insights_overhead.py                      # resnet18 and resnet50 at 64 px, CPU
    uv run python bench/insights_overhead.py --models resnet18 --rounds 1 --steps 60
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import imgcls.train as train_module
from imgcls.engine import Hook

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402
from imgcls.hyperparams import parse_hyperparameters
from imgcls.sample_data import make_sample_dataset
from imgcls.train import JobPaths, train

MODELS = ("resnet18", "resnet50")


class StepClock(Hook):
    """Wall and CPU seconds of the training steps."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.steps = 0

    def before_epoch(self, loop):
        self.w0, self.c0, self.first = time.perf_counter(), time.process_time(), loop.global_step

    def after_step(self, loop):
        self.w1, self.c1, self.last = time.perf_counter(), time.process_time(), loop.global_step

    def after_epoch(self, loop):
        self.wall += self.w1 - self.w0
        self.cpu += self.c1 - self.c0
        self.steps += self.last - self.first


def run(data: Path, work: Path, backbone: str, size: int, batch: int, steps: int, insights: bool) -> dict:
    clock = StepClock()
    real = train_module.insight_hooks

    def with_clock(hp, paths):
        collectors, judges = real(hp, paths)
        return collectors, judges + [clock]

    epochs = 4
    hp = parse_hyperparameters({"backbone": backbone, "weights": "none", "image-size": size, "batch-size": batch, "workers": 0,
                                "epochs": epochs, "max-steps-per-epoch": steps // epochs, "warmup-epochs": 0,
                                "early-stopping-patience": 0, "log-interval": 50, "insights": insights})
    paths = JobPaths(work / "model", work / "out", work / "ckpt", None, {"train": data / "train", "valid": data / "valid"})
    train_module.insight_hooks = with_clock
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the job's progress and metric lines
            train(hp, paths)
        job = time.perf_counter() - start
    finally:
        train_module.insight_hooks = real
    return {"cpu": clock.cpu / clock.steps, "wall": clock.wall / clock.steps, "job": job, "steps": clock.steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    short = os.environ.get("BENCH_SHORT") == "1"  # `make bench`: one small model, one round
    p.add_argument("--models", nargs="+", default=["resnet18"] if short else list(MODELS), choices=MODELS)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="training steps per job (4 epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1 if short else 3, help="off/on pairs per model")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: CPU time is the work, not spinning)")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("imgcls").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_class = args.batch_size * (args.steps // 4) // 4 + 1
        data = make_sample_dataset(tmp / "data", 4, (per_class, 4, 0), 96)
        for backbone in args.models:
            size = args.image_size
            run(data, tmp / "warm", backbone, size, args.batch_size, 8, True)  # first-use costs (allocator, kernels) out of the way
            rows = {False: [], True: []}
            for r in range(args.rounds):
                for insights in ((False, True) if r % 2 == 0 else (True, False)):
                    rows[insights].append(run(data, tmp / f"{backbone}-{r}-{insights}", backbone, size, args.batch_size, args.steps, insights))
                    last = rows[insights][-1]
                    print(f"{backbone} round {r + 1} insights={'on ' if insights else 'off'}: {last['cpu'] * 1e3:7.1f} ms CPU/step "
                          f"{last['wall'] * 1e3:7.1f} ms wall/step  job {last['job']:.1f} s  ({last['steps']} steps)", flush=True)
            results[backbone] = rows

    print(f"\n{'model':<18}{'CPU ms/step off':>16}{'on':>9}{'ratio':>8}{'wall ratio':>12}{'job ratio':>11}{'per-round CPU ratios':>24}")
    for backbone, rows in results.items():
        off, on = rows[False], rows[True]
        cpu_off, cpu_on = (sum(r["cpu"] for r in rs) / len(rs) for rs in (off, on))
        wall = sum(r["wall"] for r in on) / sum(r["wall"] for r in off)
        job = sum(r["job"] for r in on) / sum(r["job"] for r in off)
        per_round = [b["cpu"] / a["cpu"] for a, b in zip(off, on)]
        print(f"{backbone + ' ' + str(args.image_size) + 'px':<18}{cpu_off * 1e3:>16.1f}{cpu_on * 1e3:>9.1f}{cpu_on / cpu_off:>8.3f}"
              f"{wall:>12.3f}{job:>11.3f}{'  ' + ' '.join(f'{x:.3f}' for x in per_round):>24}")
    print(f"\nsteps per job {args.steps}, batch {args.batch_size}, {args.threads} thread(s); "
          f"median of per-round CPU ratios: " + ", ".join(
              f"{b} {statistics.median(y['cpu'] / x['cpu'] for x, y in zip(r[False], r[True])):.3f}" for b, r in results.items()))
    write_ratios("insights_overhead", f"training step CPU time, insights on / off, {args.image_size} px, {args.steps} steps",
                 [(f"{b} on/off", statistics.median(y["cpu"] / x["cpu"] for x, y in zip(r[False], r[True])), "<= 1.02")
                  for b, r in results.items()])


if __name__ == "__main__":
    main()
