"""Training throughput: our loop (imgcls.train.train) against a naive loop, side by side in one run.

Naive = ImageFolder + PIL Resize + ToTensor, num_workers=0, fp32, same model, batch and optimizer.
Prints images/s, the data-wait / compute split, the ratio, and valid accuracy of both after the
same number of epochs (a smaller model, so the accuracy check stays cheap on a CPU).

    uv run python bench/train_throughput.py                 # CPU defaults
    uv run python bench/train_throughput.py --gpu-defaults  # ResNet50 224 px, batch 256, more images
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from imgcls.hyperparams import parse_hyperparameters
from imgcls.models import build_model
from imgcls.presets import normalize
from imgcls.sample_data import make_sample_dataset
from imgcls.train import JobPaths, autocast_dtype, train

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402


def naive_loop(data: Path, backbone: str, image_size: int, batch: int, epochs: int, max_steps: int, lr: float, device):
    """The loop users write first."""
    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train_set = datasets.ImageFolder(data / "train", tf)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    model = build_model(backbone, len(train_set.classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    seen, wait, compute = 0, 0.0, 0.0
    for epoch in range(epochs):
        model.train()
        tick = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if max_steps and step >= max_steps:
                break
            got = time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            if step or epoch:  # the first step warms up (allocations, kernel selection) and is not timed
                seen += len(y)
                wait += got - tick
                compute += time.perf_counter() - got
            tick = time.perf_counter()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(datasets.ImageFolder(data / "valid", tf), batch_size=batch):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
    return {"images_per_sec": seen / (wait + compute), "data_wait_fraction": wait / (wait + compute), "valid_accuracy": correct / total}


def our_loop(data: Path, work: Path, backbone: str, image_size: int, batch: int, epochs: int, max_steps: int, lr: float,
             workers: str = "auto"):
    hp = parse_hyperparameters({"workers": workers, "backbone": backbone, "weights": "none", "image-size": image_size, "batch-size": batch,
                                "epochs": epochs, "max-steps-per-epoch": max_steps, "lr": lr, "warmup-epochs": 0,
                                "scheduler": "constant", "label-smoothing": 0, "weight-decay": 0.01, "early-stopping-patience": 0})
    paths = JobPaths(work / "model", work / "out", work / "ckpt", None, {"train": data / "train", "valid": data / "valid"})
    train(hp, paths)
    last = json.loads((work / "out" / "history.json").read_text())[-1]  # the loop's own timing, validation excluded
    return {"images_per_sec": last["images_per_sec"], "data_wait_fraction": last["data_wait_fraction"],
            "valid_accuracy": last["valid_accuracy"]}


def synthetic_ceiling(backbone: str, image_size: int, batch: int, steps: int, device, amp: str) -> float:
    """The same model and step on in-memory tensors: what a perfect input pipeline would give."""
    model = build_model(backbone, 133).to(device)
    dtype = autocast_dtype(amp, device)
    channels_last = dtype is not None or device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 255, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 133, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(normalize(x, channels_last=channels_last)).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / (sum(times) / len(times))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-defaults", action="store_true")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3 if os.environ.get("BENCH_SHORT") == "1" else 6, help="timed steps per loop")
    p.add_argument("--workers", default="auto", help="DataLoader workers of our loop (default: the training default)")
    p.add_argument("--jpeg-side", type=int, default=400, help="side of the generated JPEGs (dogImages are ~500x400)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.gpu_defaults:
        args.batch_size, args.steps = 256, 30
    n_train = args.batch_size * (args.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        classes = 8
        big = make_sample_dataset(tmp / "big", classes, (n_train // classes + 1, 2, 0), args.jpeg_side)
        print(f"device={device.type} model={args.backbone} image_size={args.image_size} batch={args.batch_size} "
              f"timed_steps={args.steps} jpeg={args.jpeg_side}px", flush=True)
        # Throughput: ours is timed on its second epoch (the first warms up); naive skips its first step.
        ours = our_loop(big, tmp / "ours", args.backbone, args.image_size, args.batch_size, 2, args.steps, 1e-3, args.workers)
        naive = naive_loop(big, args.backbone, args.image_size, args.batch_size, 1, args.steps, 1e-3, device)
        ceiling = synthetic_ceiling(args.backbone, args.image_size, args.batch_size, min(args.steps, 10), device, "auto")
        # Accuracy: a small model trained to convergence-ish by both loops on the same images.
        small = make_sample_dataset(tmp / "small", 4, (48, 16, 0), 96, seed=1)
        acc_ours = our_loop(small, tmp / "acc", "resnet18", 64, 16, 6, 0, 1e-3)["valid_accuracy"]
        acc_naive = naive_loop(small, "resnet18", 64, 16, 6, 0, 1e-3, device)["valid_accuracy"]

    print()
    print(f"{'loop':<22}{'images/s':>10}{'data wait':>11}{'compute':>9}")
    for name, r in (("naive (fp32, 0 workers)", naive), ("imgcls", ours)):
        print(f"{name:<22}{r['images_per_sec']:>10.1f}{r['data_wait_fraction']:>10.0%}{1 - r['data_wait_fraction']:>9.0%}")
    print(f"{'synthetic tensors':<22}{ceiling:>10.1f}")
    print()
    print(f"speed-up over naive: {ours['images_per_sec'] / naive['images_per_sec']:.2f}x")
    print(f"share of the synthetic-input ceiling: {ours['images_per_sec'] / ceiling:.0%}")
    print(f"valid accuracy after 6 epochs (resnet18, 64 px, 4 classes): imgcls {acc_ours:.3f}  naive {acc_naive:.3f}")
    write_ratios("train_throughput", f"{args.backbone} {args.image_size} px, batch {args.batch_size}, {device.type}", [
        ("imgcls / naive images/s", ours["images_per_sec"] / naive["images_per_sec"], ">= 2"),
        ("imgcls / synthetic-input ceiling", ours["images_per_sec"] / ceiling, ">= 0.9"),
        ("valid accuracy imgcls - naive", acc_ours - acc_naive, ">= 0")])


if __name__ == "__main__":
    main()
