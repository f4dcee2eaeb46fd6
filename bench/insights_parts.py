"""The parts of the insights' cost, each timed alone in process CPU time (resnet18, CPU, 1 thread).

    uv run python bench/insights_parts.py [--image-size 32] [--batch-size 16]

Prints ms per plain step, and what each statistic adds: the per-step gradient norm, a sampled
step (per-layer norms, mean |g|, weight copy and update ratios), a 3-step torch.profiler window
(and plain steps after it), and one system sample with and without listing loader workers.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from imgcls.insights.system import SystemSampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 4, (args.batch_size,))
    opt = torch.optim.AdamW(model.parameters())
    params = list(model.parameters())

    def step(grad_norm=False, sampled=False):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [q.grad for q in params]
        before = None
        if grad_norm or sampled:
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if sampled:
            torch.stack([g.abs().mean() for g in grads])
            before = [q.detach().clone() for q in params]
        opt.step()
        if sampled:
            delta = torch._foreach_sub([q.detach() for q in params], before)
            torch.stack(torch._foreach_norm(delta)) / (torch.stack(torch._foreach_norm(before)) + 1e-9)

    def cpu_ms(fn, n=5):
        start = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - start) / n * 1e3

    def median(fn, n=5):
        return statistics.median(cpu_ms(fn, n) for _ in range(args.repeats))

    for _ in range(3):
        step()
    plain = median(step)
    norm = median(lambda: step(grad_norm=True))
    sampled = median(lambda: step(sampled=True))

    def window():
        prof = profile(activities=[ProfilerActivity.CPU])
        prof.start()
        for _ in range(3):
            step()
        prof.stop()
    profiled = median(window, 1)
    after = median(step)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for workers in (True, False):
            sampler = SystemSampler(Path(tmp) / "s.jsonl", time.perf_counter, workers=workers)
            sampler.start()
            rows[workers] = median(sampler.sample, 20)
            sampler.stop()
    print(f"plain step                         {plain:8.1f} ms CPU")
    print(f"+ global grad norm (every step)    {norm - plain:+8.1f} ms")
    print(f"sampled step (every 50 steps)      {sampled - plain:+8.1f} ms  -> {(sampled - plain) / 50:+.2f} ms a step")
    print(f"3-step profiler window, in all     {profiled - 3 * plain:+8.1f} ms")
    print(f"plain step after the window        {after:8.1f} ms CPU")
    print(f"one system sample                  {rows[True]:8.2f} ms CPU ({rows[False]:.2f} without listing workers)")


if __name__ == "__main__":
    main()
