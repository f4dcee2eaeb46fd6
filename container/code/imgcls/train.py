"""The training loop: read it top to bottom. Presets live in presets.py, the model in models.py."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from . import reports
from .artifacts import atomic_write_json, save_model_dir
from .checkpoint import StopSignal, load_latest_checkpoint, save_checkpoint
from .data import EpochSampler, ImageFiles, default_workers, load_splits, resolve_splits
from .errors import UserError
from .hyperparams import HyperParameters
from .metrics import format_metrics
from .models import IMAGENET_MEAN, IMAGENET_STD, apply_finetune_policy, build_model, load_pretrained, param_groups, resolve_pretrained
from .presets import EvalPreset, TrainPreset, normalize

log = logging.getLogger(__name__)


@dataclass
class JobPaths:
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    tensorboard_dir: Path | None
    channels: dict[str, Path] = field(default_factory=dict)


class TrainingInterrupted(UserError):
    """SIGTERM arrived: state is saved and the job can be resumed."""


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(hp: HyperParameters) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rt = Runtime(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        rt.device = torch.device("cuda", rt.local_rank)
        torch.cuda.set_device(rt.device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo")
    if hp.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return rt


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware has it (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp16 on GPU, else fp32."""
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "fp16":
        raise UserError("hyperparameter amp: fp16 needs a GPU; use bf16 or auto on CPU")
    if amp == "bf16" or torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """Multiplier of the peak lr at each step: linear warmup, then cosine / one-cycle / constant."""
    def factor(step: int) -> float:
        if schedule == "onecycle":  # 30% warmup from peak/25, cosine down to peak/1e4
            up = max(1, int(0.3 * total_steps))
            if step < up:
                return 0.04 + 0.96 * step / up
            progress = min(1.0, (step - up) / max(1, total_steps - up))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def all_sum(values: list[float], rt: Runtime) -> list[float]:
    if rt.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, train: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, drop_last=train and len(sampler) > batch_size,
    )


@torch.no_grad()
def evaluate(model, loader, rt: Runtime, amp_dtype, channels_last: bool, num_classes: int, want_confusion=False):
    """Plain cross-entropy (no smoothing) and accuracy over the whole split, summed across ranks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=rt.device) if want_confusion else None
    for images, targets in loader:
        images = normalize(images.to(rt.device, non_blocking=True), channels_last=channels_last)
        targets = targets.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
        preds = logits.argmax(1)
        correct += (preds == targets).sum()
        seen += targets.numel()
        if confusion is not None:
            confusion += torch.bincount(targets * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)
    total_loss, total_correct, total_seen = all_sum([loss_sum.item(), float(correct.item()), float(seen)], rt)
    if confusion is not None and rt.world_size > 1:
        dist.all_reduce(confusion)
    return total_loss / max(1, total_seen), total_correct / max(1, total_seen), confusion


class Progress:
    """A bar in a terminal; plain lines every `interval` steps in SageMaker logs."""

    def __init__(self, total: int, desc: str, interval: int, enabled: bool):
        self.bar = None
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, step: int, **info) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)
        elif step % self.interval == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total} " + " ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(hp: HyperParameters, paths: JobPaths) -> dict:
    rt = setup_runtime(hp)
    torch.manual_seed(hp.seed)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = hp.workers if hp.workers is not None else default_workers(local_world, rt.device.type)

    # ---- data: every file checked once; bad ones are listed and skipped
    scan_processes = max(1, (os.cpu_count() or 1) // local_world)  # before training: nothing to compete with
    splits = load_splits(resolve_splits(paths.channels), hp.valid_fraction, hp.seed, scan_processes)
    names = splits.class_names
    log.info("classes: %d; images: train %d, valid %d, test %d", len(names), len(splits.train.samples),
             len(splits.valid.samples), len(splits.test.samples) if splits.test else 0)
    train_preset, eval_preset = TrainPreset(hp.image_size, hp.crop_scale, hp.hflip), EvalPreset(hp.image_size)
    train_sampler = EpochSampler(len(splits.train.samples), shuffle=True, seed=hp.seed, rank=rt.rank, world_size=rt.world_size)
    train_loader = make_loader(ImageFiles(splits.train.samples, train_preset, hp.seed), train_sampler, hp.batch_size, workers, rt.device, True)

    def eval_loader(split):
        sampler = EpochSampler(len(split.samples), shuffle=False, seed=0, rank=rt.rank, world_size=rt.world_size, pad=False)
        return make_loader(ImageFiles(split.samples, eval_preset), sampler, hp.batch_size, workers, rt.device, False)

    valid_loader = eval_loader(splits.valid)

    # ---- model: pretrained backbone, new head, fine-tune policy
    model = build_model(hp.backbone, len(names))
    pretrained = resolve_pretrained(hp.backbone, hp.weights, paths.channels.get("pretrained"), hp.allow_download)
    if pretrained is not None:
        load_pretrained(model, hp.backbone, pretrained)
    trainable_stages = -1 if hp.finetune == "all" else 0 if hp.finetune == "head" else int(hp.finetune)
    apply_finetune_policy(model, hp.backbone, trainable_stages)
    amp_dtype = autocast_dtype(hp.amp, rt.device)
    channels_last = hp.channels_last and (rt.device.type == "cuda" or amp_dtype is not None)
    model.to(rt.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    head_lr = hp.head_lr or (hp.lr * 10 if pretrained is not None else hp.lr)
    groups = param_groups(model, hp.backbone, hp.lr, head_lr, hp.weight_decay)
    if hp.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
    steps_per_epoch = len(train_loader) if not hp.max_steps_per_epoch else min(len(train_loader), hp.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(hp.epochs * steps_per_epoch, int(hp.warmup_epochs * steps_per_epoch), hp.scheduler))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None) if rt.world_size > 1 else model

    # ---- resume from the newest complete checkpoint (spot restarts)
    history: list[dict] = []
    best = {"valid_loss": math.inf, "epoch": -1, "state": None}
    start_epoch, start_step, bad_epochs = 0, 0, 0
    partial = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "data_wait": 0.0, "compute": 0.0}
    state = load_latest_checkpoint(paths.checkpoint_dir)
    if state is not None:
        if state["class_names"] != names or state["backbone"] != hp.backbone:
            raise UserError(f"checkpoint in {paths.checkpoint_dir} belongs to another model (backbone or classes differ); "
                            "empty that folder or point checkpoint-dir elsewhere")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history, best, bad_epochs, partial = state["history"], state["best"], state["bad_epochs"], state["partial"]
        start_epoch, start_step = state["epoch"], state["step"]

    def snapshot(epoch: int, step: int) -> dict:
        return {"epoch": epoch, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "history": history, "best": best, "bad_epochs": bad_epochs, "partial": dict(partial),
                "class_names": names, "backbone": hp.backbone, "hyperparameters": hp.as_dict()}

    tb = None
    if rt.is_main and paths.tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(paths.tensorboard_dir))

    # ---- the loop
    with StopSignal() as stop:
        for epoch in range(start_epoch, hp.epochs):
            if bad_epochs >= hp.early_stopping_patience > 0:
                break
            net.train()
            first_step = start_step if epoch == start_epoch else 0
            if first_step == 0:
                partial = dict.fromkeys(partial, 0.0)
            train_sampler.set_epoch(epoch, start=first_step * hp.batch_size)
            progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{hp.epochs}", hp.log_interval, rt.is_main)
            epoch_start = time.perf_counter()
            running_loss = torch.zeros((), device=rt.device)  # summed on the device; .item() only now and then
            running_correct = torch.zeros((), dtype=torch.int64, device=rt.device)

            def flush() -> None:
                partial["loss"] += running_loss.item()
                partial["correct"] += running_correct.item()
                running_loss.zero_()
                running_correct.zero_()
                if not math.isfinite(partial["loss"]):
                    raise UserError(f"training diverged at epoch {epoch + 1} step {step}: loss is not finite; lower lr (now {hp.lr})")

            tick = time.perf_counter()
            step = first_step
            for images, targets in train_loader:
                if step >= steps_per_epoch:
                    break
                waited = time.perf_counter() - tick
                images = normalize(images.to(rt.device, non_blocking=True), channels_last=channels_last)
                targets = targets.to(rt.device, non_blocking=True)
                with torch.autocast(rt.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = net(images)
                    loss = criterion(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                running_loss += loss.detach() * targets.numel()
                running_correct += (logits.argmax(1) == targets).sum()
                partial["seen"] += targets.numel()
                partial["data_wait"] += waited
                partial["compute"] += time.perf_counter() - tick - waited
                at_interval = step % hp.log_interval == 0 or step == steps_per_epoch  # the same steps on every rank
                if at_interval or progress.bar is not None or stop.received:
                    flush()
                    progress.update(step, loss=partial["loss"] / partial["seen"], lr=optimizer.param_groups[0]["lr"],
                                    img_s=partial["seen"] * rt.world_size / max(1e-9, partial["data_wait"] + partial["compute"]))
                # Single process: stop at once. DDP: ranks agree at interval steps, so all stop at the same step.
                stop_now = bool(stop.received) if rt.world_size == 1 else at_interval and all_sum([float(bool(stop.received))], rt)[0] > 0
                if stop_now:
                    flush()
                    if rt.is_main:
                        path = save_checkpoint(paths.checkpoint_dir, snapshot(epoch, step))
                        log.warning("checkpoint saved to %s", path)
                    progress.close()
                    raise TrainingInterrupted(f"stopped by signal at epoch {epoch + 1} step {step}/{steps_per_epoch}; "
                                              f"state saved in {paths.checkpoint_dir}, a restarted job resumes from it")
                tick = time.perf_counter()
            flush()
            progress.close()

            train_loss, train_correct, train_seen = all_sum([partial["loss"], partial["correct"], partial["seen"]], rt)
            valid_loss, valid_acc, _ = evaluate(net, valid_loader, rt, amp_dtype, channels_last, len(names))
            busy = partial["data_wait"] + partial["compute"]
            row = {"epoch": epoch + 1, "train_loss": train_loss / max(1, train_seen), "train_accuracy": train_correct / max(1, train_seen),
                   "valid_loss": valid_loss, "valid_accuracy": valid_acc, "lr": optimizer.param_groups[0]["lr"],
                   "epoch_seconds": time.perf_counter() - epoch_start, "images_per_sec": train_seen / max(1e-9, busy),
                   "data_wait_fraction": partial["data_wait"] / max(1e-9, busy)}
            history.append(row)
            if valid_loss < best["valid_loss"]:
                best = {"valid_loss": valid_loss, "epoch": epoch + 1, "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                bad_epochs = 0
            else:
                bad_epochs += 1
            if rt.is_main:
                print(format_metrics(f"epoch={epoch + 1}/{hp.epochs}", {k: row[k] for k in
                      ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds")}), flush=True)
                if tb is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            tb.add_scalar(key, value, epoch + 1)
                save_checkpoint(paths.checkpoint_dir, snapshot(epoch + 1, 0))
            if bad_epochs >= hp.early_stopping_patience > 0:
                log.info("early stopping: no better valid_loss for %d epochs (best at epoch %d)", bad_epochs, best["epoch"])

    # ---- best weights, test, artifacts (rank 0 writes)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    final_split = splits.test or splits.valid
    final_loss, final_acc, confusion = evaluate(net, eval_loader(final_split), rt, amp_dtype, channels_last, len(names), want_confusion=True)
    final = {"best_epoch": best["epoch"], "best_valid_loss": best["valid_loss"],
             f"{'test' if splits.test else 'valid'}_loss": final_loss, f"{'test' if splits.test else 'valid'}_accuracy": final_acc}
    if rt.is_main:
        if splits.test is not None:
            print(format_metrics("final", {"test_loss": final_loss, "test_accuracy": final_acc}), flush=True)
        kept = next((row for row in history if row["epoch"] == best["epoch"]), {})  # the epoch whose weights are saved
        print(format_metrics(f"best epoch={best['epoch']}", {"best_valid_loss": kept.get("valid_loss"), "best_valid_accuracy": kept.get("valid_accuracy")}), flush=True)
        config = {"backbone": hp.backbone, "image_size": hp.image_size, "resize_size": eval_preset.resize_size,
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metrics": final,
                  "hyperparameters": hp.as_dict(), "torch_version": torch.__version__}
        save_model_dir(paths.model_dir, model, names, config)
        out = Path(paths.output_data_dir)
        reports.write_history(out, history)
        reports.plot_learning_curves(history, out / "learning_curves.png")
        reports.write_confusion_matrix(confusion.cpu().numpy(), names, out)
        skipped = [{"split": s.name, "path": p, "reason": r} for s in (splits.train, splits.valid, splits.test) if s for p, r in s.skipped]
        if skipped:
            atomic_write_json(out / "skipped_files.json", skipped)
        if tb is not None:
            tb.close()
        log.info("model written to %s", paths.model_dir)
    if rt.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final
