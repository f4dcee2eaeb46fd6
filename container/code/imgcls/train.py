"""The training loop: read it top to bottom. Presets live in presets.py, the model in models.py."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from . import reports
from .artifacts import atomic_write_json, save_model_dir
from .checkpoint import Checkpointer, StopSignal, data_fingerprint, job_identity
from .data import EpochSampler, ImageFiles, default_workers, load_splits, resolve_splits
from .engine import Hooks, LoopState, StepTimer, Timeline, all_sum
from .errors import UserError
from .hooks import BestWeights, DivergenceGuard, HistoryWriter, MetricLines, Progress, ProgressHook, TensorBoardHook
from .insights.collect import insight_hooks
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


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, train: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, drop_last=train and len(sampler) > batch_size,
    )


@torch.no_grad()
def evaluate(model, loader, rt: Runtime, amp_dtype, channels_last: bool, num_classes: int, want_confusion=False,
             desc: str = "evaluating", log_interval: int = 20):
    """Plain cross-entropy (no smoothing) and accuracy over the whole split, summed across ranks."""
    model.eval()
    progress = Progress(len(loader), desc, log_interval, rt.is_main)
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=rt.device) if want_confusion else None
    for step, (images, targets) in enumerate(loader, 1):
        images = normalize(images.to(rt.device, non_blocking=True), channels_last=channels_last)
        targets = targets.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        progress.update(step)
        loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
        preds = logits.argmax(1)
        correct += (preds == targets).sum()
        seen += targets.numel()
        if confusion is not None:
            confusion += torch.bincount(targets * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)
    progress.close()
    total_loss, total_correct, total_seen = all_sum([loss_sum.item(), float(correct.item()), float(seen)], rt)
    if confusion is not None and rt.world_size > 1:
        dist.all_reduce(confusion)
    return total_loss / max(1, total_seen), total_correct / max(1, total_seen), confusion


def train(hp: HyperParameters, paths: JobPaths) -> dict:
    timeline = Timeline()
    rt = setup_runtime(hp)
    torch.manual_seed(hp.seed)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = hp.workers if hp.workers is not None else default_workers(local_world, rt.device.type)

    # ---- data: every file checked once; bad ones are listed and skipped
    timeline.mark("data_scan_start")
    scan_processes = max(1, (os.cpu_count() or 1) // local_world)  # before training: nothing to compete with
    splits = load_splits(resolve_splits(paths.channels), hp.valid_fraction, hp.seed, scan_processes)
    timeline.mark("data_scan_end")
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
    timeline.mark("model_build_start")
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
    timeline.mark("model_ready")

    # ---- the listeners; the checkpointer last, so its snapshot holds every other hook's state of the epoch
    loop = LoopState(hp=hp, rt=rt, paths=paths, model=model, net=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     criterion=criterion, class_names=names, steps_per_epoch=steps_per_epoch, splits=splits,
                     loaders={"train": train_loader, "valid": valid_loader}, timeline=timeline, timer=StepTimer())
    best = BestWeights(hp.early_stopping_patience)
    collect, judge = insight_hooks(hp, paths)  # first, so its rules speak before the loop's own checks
    hooks = Hooks([*collect, ProgressHook(), best, MetricLines(), HistoryWriter(paths.output_data_dir), DivergenceGuard(len(names))])
    if paths.tensorboard_dir is not None:
        hooks.append(TensorBoardHook(paths.tensorboard_dir))
    hooks += judge
    checkpointer = Checkpointer(paths.checkpoint_dir, hooks, job_identity(hp.as_dict(), names, data_fingerprint(splits)), hp.checkpoints)
    hooks.append(checkpointer)
    checkpointer.resume(loop)  # the newest complete checkpoint, if any (spot restarts)
    timer = loop.timer

    # ---- the loop
    with StopSignal() as loop.stop_signal:
        try:
            hooks.call("before_train", loop)
            timeline.mark("training_start")
            for epoch in range(loop.epoch, hp.epochs):
                if loop.finish_early:
                    break
                net.train()
                if loop.step == 0:
                    loop.partial = dict.fromkeys(loop.partial, 0.0)
                train_sampler.set_epoch(epoch, start=loop.step * hp.batch_size)
                epoch_start = time.perf_counter()
                loop.running_loss = torch.zeros((), device=rt.device)  # summed on the device; read at sync points only
                loop.running_correct = torch.zeros((), dtype=torch.int64, device=rt.device)
                timeline.mark("epoch_start", epoch=epoch + 1)
                hooks.call("before_epoch", loop)
                timer.restart()
                for images, targets in train_loader:
                    if loop.step >= steps_per_epoch:
                        break
                    waited = timer.lap("data")
                    images = normalize(images.to(rt.device, non_blocking=True), channels_last=channels_last)
                    targets = targets.to(rt.device, non_blocking=True)
                    timer.lap("h2d")
                    with torch.autocast(rt.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = net(images)
                        loss = criterion(logits.float(), targets)
                    timer.lap("forward")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    loop.images, loop.targets, loop.logits, loop.loss = images, targets, logits, loss
                    hooks.call("after_backward", loop)
                    timer.lap("backward")
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    timer.lap("optimizer")
                    loop.step += 1
                    loop.running_loss += loss.detach() * targets.numel()
                    loop.running_correct += (logits.argmax(1) == targets).sum()
                    loop.partial["seen"] += targets.numel()
                    loop.partial["data_wait"] += waited
                    loop.partial["compute"] += timer.since_start() - waited
                    hooks.call("after_step", loop)
                    if loop.at_interval:  # the loop's own sync point (hooks may have synced already)
                        loop.sync()
                    timer.end_step(loop.global_step)
                loop.sync()
                loop.images = loop.targets = loop.logits = loop.loss = None

                p = loop.partial
                train_loss, train_correct, train_seen = loop.all_sum([p["loss"], p["correct"], p["seen"]])
                timeline.mark("evaluation_start", epoch=epoch + 1)
                valid_loss, valid_acc, _ = evaluate(net, valid_loader, rt, amp_dtype, channels_last, len(names),
                                                    desc=f"valid {epoch + 1}/{hp.epochs}", log_interval=hp.log_interval)
                timeline.mark("evaluation_end", epoch=epoch + 1)
                busy = p["data_wait"] + p["compute"]
                loop.history.append({
                    "epoch": epoch + 1, "train_loss": train_loss / max(1, train_seen), "train_accuracy": train_correct / max(1, train_seen),
                    "valid_loss": valid_loss, "valid_accuracy": valid_acc, "lr": optimizer.param_groups[0]["lr"],
                    "epoch_seconds": time.perf_counter() - epoch_start, "images_per_sec": train_seen / max(1e-9, busy),
                    "data_wait_fraction": p["data_wait"] / max(1e-9, busy)})
                loop.epoch, loop.step = epoch + 1, 0
                timeline.mark("epoch_end", epoch=epoch + 1)
                hooks.call("after_epoch", loop)
            timeline.mark("training_end")

            # ---- best weights, test, artifacts (rank 0 writes)
            best.restore(model)
            final_split = splits.test or splits.valid
            timeline.mark("evaluation_start", epoch=None)
            final_loss, final_acc, confusion = evaluate(net, eval_loader(final_split), rt, amp_dtype, channels_last, len(names),
                                                        want_confusion=True, desc=final_split.name, log_interval=hp.log_interval)
            timeline.mark("evaluation_end", epoch=None)
            final = {"best_epoch": best.epoch, "best_valid_loss": best.valid_loss,
                     f"{'test' if splits.test else 'valid'}_loss": final_loss, f"{'test' if splits.test else 'valid'}_accuracy": final_acc}
            if rt.is_main:
                if splits.test is not None:
                    print(format_metrics("final", {"test_loss": final_loss, "test_accuracy": final_acc}), flush=True)
                kept = next((row for row in loop.history if row["epoch"] == best.epoch), {})  # the epoch whose weights are saved
                print(format_metrics(f"best epoch={best.epoch}", {"best_valid_loss": kept.get("valid_loss"),
                                                                  "best_valid_accuracy": kept.get("valid_accuracy")}), flush=True)
                config = {"backbone": hp.backbone, "image_size": hp.image_size, "resize_size": eval_preset.resize_size,
                          "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metrics": final,
                          "hyperparameters": hp.as_dict(), "torch_version": torch.__version__}
                save_model_dir(paths.model_dir, model, names, config)
                out = Path(paths.output_data_dir)
                reports.write_confusion_matrix(confusion.cpu().numpy(), names, out)
                skipped = [{"split": s.name, "path": p, "reason": r} for s in (splits.train, splits.valid, splits.test) if s for p, r in s.skipped]
                if skipped:
                    atomic_write_json(out / "skipped_files.json", skipped)
                log.info("model written to %s", paths.model_dir)
        except BaseException as exc:
            loop.failure = exc
            raise
        finally:
            hooks.finish(loop)  # after_train: always, also on a stop or an error
    if rt.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final
