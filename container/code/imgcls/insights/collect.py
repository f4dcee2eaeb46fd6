"""Insight collection during training: listeners on the loop's events that write the raw files of FORMAT.md.

Cheap by construction (figures in the README): per step only host clocks, a detached loss and one
fused `_foreach_norm` kernel whose result stays on the device until the loop syncs anyway; the
costly statistics run on sampled steps (module hooks are attached for those steps only), on the
first steps, or before training; the host is sampled by a background thread once a second.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_write_json
from ..engine import Hook, LoopState, StepTimer
from ..errors import UserError
from ..figures import reason
from .system import SystemSampler

log = logging.getLogger(__name__)

RAW_DIR = Path("insights") / "raw"
GRAD_SAMPLE = 20_000  # gradient values per init step for the percentiles
PROFILER_AFTER_INIT = 3  # steps between the init steps and the profiler window (cudnn autotuning, allocator warm-up)
TOP_OPS = 30


class InsightStop(UserError):
    """A rule told training to stop (ExplodingTensor by default): no model is written from these weights."""


def insight_hooks(hp, paths) -> tuple[list[Hook], list[Hook]]:
    """(collectors, judges): collectors listen first, so ExplodingTensor speaks before the loop's own checks;
    judges listen last, after the history of the epoch is written. The smdebug bridge whenever SageMaker
    configured Debugger (even with insights off: the user asked for it)."""
    from .smdebug_bridge import smdebug_hook_from_environment
    collectors: list[Hook] = []
    judges: list[Hook] = []
    bridge = smdebug_hook_from_environment()
    if bridge is not None:
        collectors.append(bridge)
    if hp.insights:
        from .rules import validate_rule_params
        params = validate_rule_params(hp.rule_params)
        collectors.append(Collector(hp, Path(paths.output_data_dir), params))
        judges.append(OnlineRules(Path(paths.output_data_dir), params, draw=hp.insights_report))
    return collectors, judges


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class _JsonLines:
    """An append-only JSON-lines file; lines reach the disk at `flush()` (every epoch and at the end)."""

    def __init__(self, path: Path, keep_until_step: int | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and path.exists():  # a resumed job redoes steps after its checkpoint
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= keep_until_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, allow_nan=False) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn line: dropped


def _relu_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or "relu", m) for name, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]


class _CallNames:
    """torchvision blocks call one ReLU module several times per forward: name the calls `x`, `x#2`, `x#3`."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def next(self, name: str) -> str:
        n = self.calls[name] = self.calls.get(name, 0) + 1
        return name if n == 1 else f"{name}#{n}"

    def reset(self) -> None:
        self.calls.clear()


class Collector(Hook):
    """Writes steps.jsonl, layers.jsonl, init.json, dataset.json, system.jsonl, timeline.json, loader.json,
    job.json, ranks.json and the profiler window (only rank 0 writes; every rank measures)."""

    def __init__(self, hp, output_data_dir: Path, params: dict):
        self.hp, self.out, self.params = hp, Path(output_data_dir), params
        self.raw = self.out / RAW_DIR
        self.interval, self.init_steps, self.profiler_steps = hp.insights_sample_interval, hp.insights_init_steps, hp.profiler_steps
        self.profile_first = self.init_steps + PROFILER_AFTER_INIT + 1
        self.stop_on_nonfinite = bool(params.get("ExplodingTensor", {}).get("stop", True))
        self.pending: list[dict] = []  # steps whose device values are not read yet
        self.resolved: dict[int, dict] = {}  # steps read, waiting for their timer record
        self.layer_rows: list[dict] = []
        self.init = {"activation_variance": {}, "grad_p5_per_step": [], "grad_p95_per_step": [], "losses": [], "steps": 0}
        self.epoch_totals: list[float] = []
        self.handles: list = []
        self.names = _CallNames()
        self.step_relu: dict[str, torch.Tensor] = {}
        self.step_var: dict[str, torch.Tensor] = {}
        self.weights_before: list[torch.Tensor] | None = None
        self.profiler = None
        self.profiled_steps: list[int] = []
        self.sampler: SystemSampler | None = None
        self.steps_file = self.layers_file = None
        self.first_step_seen = False
        self.step_record: dict | None = None

    # --- what is observed on which step
    def _sampled(self, step: int) -> bool:
        return step == 1 or step % self.interval == 0

    def _init_step(self, step: int) -> bool:
        return step <= self.init_steps

    # --- events
    def before_train(self, loop: LoopState) -> None:
        self.main = loop.rt.is_main
        self.cuda = loop.rt.device.type == "cuda"
        self.fp16_scaler = loop.scaler.is_enabled()
        loop.timer.keep, loop.timer.cuda_events = True, self.cuda
        self.trainable = [(n, p) for n, p in loop.model.named_parameters() if p.requires_grad]
        self.relus = _relu_modules(loop.model)
        numel = sum(p.numel() for _, p in self.trainable)
        self.grad_stride = max(1, numel // GRAD_SAMPLE)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(loop.rt.device)
        if not self.main:
            return
        self.raw.mkdir(parents=True, exist_ok=True)
        resumed_at = loop.global_step if loop.global_step > 0 else None
        if resumed_at is None:
            for stale in ("steps.jsonl", "layers.jsonl", "system.jsonl", "ranks.json", "init.json"):
                (self.raw / stale).unlink(missing_ok=True)
        self.steps_file = _JsonLines(self.raw / "steps.jsonl", resumed_at or 0)
        self.layers_file = _JsonLines(self.raw / "layers.jsonl", resumed_at or 0)
        self._write_static(loop)
        self.sampler = SystemSampler(self.raw / "system.jsonl", loop.timeline.now, gpus=self.cuda,
                                     workers=loop.loaders["train"].num_workers > 0)
        self.sampler.start()
        self._write_timeline(loop)

    def before_epoch(self, loop: LoopState) -> None:
        self.epoch_totals = []
        self._arm(loop.global_step + 1)

    def after_backward(self, loop: LoopState) -> None:
        step = loop.global_step + 1  # the step in progress
        named = [(n, p.grad) for n, p in self.trainable if p.grad is not None]
        grads = [g for _, g in named]
        norms = torch._foreach_norm(grads) if grads else []
        total = torch.linalg.vector_norm(torch.stack(norms)) if grads else None
        unscale = loop.scaler._scale if self.fp16_scaler else None  # the norm of the true gradients, no sync
        if total is not None and unscale is not None:
            total = total / unscale
        record = {"grad_norm": total, "lr": float(loop.optimizer.param_groups[0]["lr"])}  # the lr this step uses
        if self._sampled(step) and grads:
            stacked = torch.stack(norms)
            record["layer_names"] = [n for n, _ in named]
            record["layer_norms"] = stacked / unscale if unscale is not None else stacked
            mean_abs = torch.stack([g.abs().mean() for g in grads])
            record["layer_mean_abs"] = mean_abs / unscale if unscale is not None else mean_abs
            self.weights_before = [p.detach().clone() for n, p in self.trainable if p.grad is not None]
        if self._init_step(step) and grads:
            flat = torch.cat([g.reshape(-1)[:: self.grad_stride].float() for g in grads])
            if unscale is not None:
                flat = flat / unscale
            record["grad_quantiles"] = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device))
        self.step_record = record

    def after_step(self, loop: LoopState) -> None:
        step = loop.global_step
        record = self.step_record
        self.step_record = None
        record.update(epoch=loop.epoch + 1, step=step, loss=loop.loss.detach(), batch=int(loop.targets.shape[0]))
        if self.cuda:
            record["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(loop.rt.device))
            torch.cuda.reset_peak_memory_stats(loop.rt.device)
        if self.weights_before is not None:
            after = [p.detach() for n, p in self.trainable if p.grad is not None]
            delta = torch._foreach_sub(after, self.weights_before)
            record["update_ratio"] = torch.stack(torch._foreach_norm(delta)) / (torch.stack(torch._foreach_norm(self.weights_before)) + 1e-9)
            self.weights_before = None
        if self.step_relu:
            record["relu_active"] = self.step_relu
        if self.step_var:
            record["activation_variance"] = self.step_var
        self._disarm()
        record["profiled"] = self.profiler is not None
        self.pending.append(record)
        if not self.first_step_seen:  # of this process (a resumed job has its own)
            self.first_step_seen = True
            loop.timeline.mark("first_batch", at=loop.timer.start + loop.timer.laps["data"], step=step)
            loop.timeline.mark("first_step", step=step)
        self._profile(loop, step)
        if loop.at_interval:
            self._read(loop)
        if loop.step < loop.steps_per_epoch:
            self._arm(step + 1)

    def after_epoch(self, loop: LoopState) -> None:
        self._read(loop)
        self._write_steps(loop)
        if loop.rt.world_size > 1:
            self._gather_rank_times(loop)
        if self.main:
            self._flush(loop)

    def after_train(self, loop: LoopState) -> None:
        """Write what was collected, also after a stop or a failure; a problem here never fails the job."""
        self._disarm()
        try:
            if self.profiler is not None:
                self._stop_profiler(loop)
            if "optimizer" in loop.timer.laps:  # a stop in after_step: that step is done, close its timing
                loop.timer.end_step(loop.global_step)
            self._read(loop, check=False)
            self._write_steps(loop)
        except Exception as exc:  # e.g. the device is gone after a CUDA error
            log.warning("insights: the last steps could not be read: %s", exc)
        if self.main:
            try:
                self._export_profile(loop)
            except Exception as exc:
                log.warning("insights: profiler window not written: %s", exc)
            try:
                self._finish(loop)
            except Exception as exc:
                log.warning("insights: raw files not completed: %s", exc)

    # --- module hooks, only on the steps that need them
    def _arm(self, step: int) -> None:
        self._disarm()
        if self._sampled(step):
            for name, module in self.relus:
                self.handles.append(module.register_forward_hook(self._relu_activity(name)))
        if self._init_step(step):
            for name, module in self.relus:
                self.handles.append(module.register_forward_pre_hook(self._relu_input_variance(name)))

    def _disarm(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.names.reset()
        self.var_names = _CallNames()
        self.step_relu, self.step_var = {}, {}

    def _relu_activity(self, name: str):
        def hook(module, inputs, output):
            if module.training:  # never during validation
                dims = [d for d in range(output.dim()) if d != 1]
                self.step_relu[self.names.next(name)] = (output.detach() > 0).float().mean(dim=dims)
        return hook

    def _relu_input_variance(self, name: str):
        def hook(module, inputs):
            if module.training:  # ReLUs are in-place: the pre-hook sees the input before it is overwritten
                self.step_var[self.var_names.next(name)] = inputs[0].detach().float().var()
        return hook

    # --- reading device values (only at sync points: the loop has just synced)
    def _read(self, loop: LoopState, check: bool = True) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        losses = torch.stack([r["loss"].float() for r in pending]).tolist()
        norms = [r["grad_norm"] for r in pending]
        have = [n for n in norms if n is not None]
        norm_values = iter(torch.stack([n.float() for n in have]).tolist() if have else [])
        bad = []
        for r, loss in zip(pending, losses):
            norm = next(norm_values) if r["grad_norm"] is not None else None
            row = {"epoch": r["epoch"], "step": r["step"], "loss": _finite(loss), "grad_norm": _finite(norm), "lr": r["lr"],
                   "batch": r["batch"], "cuda_peak_bytes": r.get("cuda_peak_bytes")}
            if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm) and not self.fp16_scaler):
                bad.append((r, "loss" if not math.isfinite(loss) else "gradient norm"))
            if r["profiled"]:
                row["profiled"] = True
            if "layer_norms" in r:
                row["sampled"] = True
                self._layer_row(r)
            if "grad_quantiles" in r or "activation_variance" in r:
                self._init_row(r, loss)
            self.resolved[r["step"]] = row
        if check and self.stop_on_nonfinite:
            self._check_exploding(loop, bad)

    def _check_exploding(self, loop: LoopState, bad: list) -> None:
        stop = float(bool(bad))
        if loop.rt.world_size > 1:  # ranks agree, so all stop at the same step
            stop = loop.all_sum([stop])[0]
        if not stop:
            return
        if bad:
            r, what = bad[0]
            reason = (f"ExplodingTensor: non-finite {what} at step {r['step']} (epoch {r['epoch']}); training stopped and no "
                      f"model written; lower lr (now {self.hp.lr:g}), add warm-up, or use amp=bf16 "
                      f"(set ExplodingTensor_stop=false to keep going)")
        else:
            reason = "ExplodingTensor: non-finite values on another rank; training stopped and no model written"
        log.error("insights rule=ExplodingTensor TRIGGERED: %s", reason)
        raise InsightStop(reason)

    def _layer_row(self, r: dict) -> None:
        names = r["layer_names"]
        row = {"step": r["step"],
               "grad_norm": dict(zip(names, (_finite(v) for v in r["layer_norms"].float().tolist()))),
               "grad_mean_abs": dict(zip(names, (_finite(v) for v in r["layer_mean_abs"].float().tolist()))),
               "update_ratio": dict(zip(names, (_finite(v) for v in r["update_ratio"].float().tolist()))) if "update_ratio" in r else {},
               "relu_active": {k: [round(x, 4) for x in v.float().tolist()] for k, v in r.get("relu_active", {}).items()}}
        self.layer_rows.append(row)

    def _init_row(self, r: dict, loss: float) -> None:
        init = self.init
        init["steps"] += 1
        init["losses"].append(_finite(loss))
        if "grad_quantiles" in r:
            p5, p95 = r["grad_quantiles"].tolist()
            init["grad_p5_per_step"].append(p5)
            init["grad_p95_per_step"].append(p95)
        for name, var in r.get("activation_variance", {}).items():
            init["activation_variance"].setdefault(name, []).append(float(var))

    # --- writing
    def _write_steps(self, loop: LoopState) -> None:
        """Join the read values with the finished step timings, in order; write them (rank 0)."""
        for timing in loop.timer.finished:
            row = self.resolved.pop(timing["step"], None)
            if row is None:
                continue
            laps = StepTimer.resolve(timing)
            self.epoch_totals.append(timing["total"])
            if not self.main:
                continue
            t = timing["end"] + loop.timeline.offset
            row.update({"t": round(t, 6), **{k: round(v, 6) for k, v in laps.items()}, "total": round(timing["total"], 6)})
            self.steps_file.write(row)
        loop.timer.finished.clear()
        if self.main:
            for row in self.layer_rows:
                self.layers_file.write(row)
        self.layer_rows = []

    def _flush(self, loop: LoopState) -> None:
        self.steps_file.flush()
        self.layers_file.flush()
        if self.init["steps"]:
            init = self.init
            p5, p95 = init["grad_p5_per_step"], init["grad_p95_per_step"]
            atomic_write_json(self.raw / "init.json", {
                "steps": init["steps"], "losses": init["losses"],
                "activation_variance": {k: float(np.mean(v)) for k, v in init["activation_variance"].items()},
                "grad_p5": float(np.mean(p5)) if p5 else None, "grad_p95": float(np.mean(p95)) if p95 else None,
                "grad_p5_per_step": p5, "grad_p95_per_step": p95})
        self._write_timeline(loop)

    def _write_static(self, loop: LoopState) -> None:
        splits, names = loop.splits, loop.class_names
        counts = {s.name: np.bincount([t for _, t in s.samples], minlength=len(names)).tolist()
                  for s in (splits.train, splits.valid, splits.test) if s is not None}
        atomic_write_json(self.raw / "dataset.json", {"class_names": names, "counts": counts})
        loader = loop.loaders["train"]
        atomic_write_json(self.raw / "loader.json", {
            "num_workers": loader.num_workers, "pin_memory": loader.pin_memory, "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers, "batch_size": loader.batch_size,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "device": str(loop.rt.device), "world_size": loop.rt.world_size, "steps_per_epoch": loop.steps_per_epoch})
        atomic_write_json(self.raw / "job.json", {
            "hyperparameters": {k: v for k, v in self.hp.as_dict().items() if k not in self.hp.rule_params},
            "rule_params": dict(self.hp.rule_params), "world_size": loop.rt.world_size, "device": str(loop.rt.device),
            "torch_version": torch.__version__, "backbone": self.hp.backbone, "sample_interval": self.interval,
            "init_steps": self.init_steps})

    def _write_timeline(self, loop: LoopState) -> None:
        atomic_write_json(self.raw / "timeline.json", loop.timeline.events)

    def _gather_rank_times(self, loop: LoopState) -> None:
        import torch.distributed as dist
        totals = np.array(self.epoch_totals or [math.nan])
        mine = {"epoch": loop.epoch, "rank": loop.rt.rank, "p50": float(np.median(totals)), "mean": float(np.mean(totals)),
                "max": float(np.max(totals)), "steps": len(self.epoch_totals)}
        gathered = [None] * loop.rt.world_size
        dist.all_gather_object(gathered, mine)
        if self.main:
            path = self.raw / "ranks.json"
            try:
                previous = json.loads(path.read_text())
            except (OSError, ValueError):
                previous = []
            atomic_write_json(path, previous + sorted(gathered, key=lambda r: r["rank"]))

    def _finish(self, loop: LoopState) -> None:
        failure = loop.failure
        if failure is None:
            end = {"status": "completed"}
        else:
            from ..checkpoint import TrainingInterrupted
            from ..failure import failure_reason
            end = {"status": "stopped" if isinstance(failure, TrainingInterrupted) else "failed", "reason": failure_reason(failure)}
        loop.timeline.mark("end", **end)
        if self.sampler is not None:
            self.sampler.stop()
        if self.steps_file is not None:
            self._flush(loop)
            self.steps_file.close()
            self.layers_file.close()

    # --- the torch.profiler window (rank 0)
    def _profile(self, loop: LoopState, step: int) -> None:
        if not self.profiler_steps or not self.main:
            return
        if self.profiler is None and step == self.profile_first - 1 and not self.profiled_steps:
            # Kineto logs "ERROR ... gpuGetDeviceCount failed" on every CPU-only job; a user's setting wins.
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
            from torch.profiler import ProfilerActivity, profile
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.profiler = profile(activities=activities)
            self.profiler.start()
            loop.timeline.mark("profiler_start", step=step + 1)
        elif self.profiler is not None:
            self.profiled_steps.append(step)
            if len(self.profiled_steps) >= self.profiler_steps:
                self._stop_profiler(loop)

    def _stop_profiler(self, loop: LoopState) -> None:
        self.window, self.profiler = self.profiler, None
        self.window.stop()
        loop.timeline.mark("profiler_end", step=loop.global_step)

    def _export_profile(self, loop: LoopState) -> None:
        """Trace and operator table at the end of the job, so the steps do not pay for them."""
        window = getattr(self, "window", None)
        if window is None or not self.profiled_steps:
            return
        folder = self.raw / "profiler"
        folder.mkdir(parents=True, exist_ok=True)
        window.export_chrome_trace(str(folder / "trace.json"))
        rows = []
        for evt in window.key_averages():
            cpu = float(evt.self_cpu_time_total)
            device = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
            rows.append({"name": evt.key, "self_cpu_us": cpu, "self_cuda_us": device, "calls": int(evt.count)})
        key = "self_cuda_us" if self.cuda else "self_cpu_us"
        total = sum(r[key] for r in rows) or 1.0
        rows.sort(key=lambda r: -r[key])
        for r in rows:
            r["share"] = r[key] / total
        atomic_write_json(folder / "top_ops.json", rows[:TOP_OPS])
        atomic_write_json(folder / "window.json", {"steps": self.profiled_steps, "device": str(loop.rt.device)})
        self.window = None


class OnlineRules(Hook):
    """Evaluates the rules at every epoch end (rank 0; a stop is agreed by all ranks) and writes the report at the end.

    A triggered rule is logged once, as one line; a rule told to stop (`<RuleName>_stop=true`) stops the job.
    """

    def __init__(self, output_data_dir: Path, params: dict, draw: bool = True):
        self.out, self.params, self.draw = Path(output_data_dir), params, draw
        self.logged: set[str] = set()

    def after_epoch(self, loop: LoopState) -> None:
        stop = None
        if loop.rt.is_main:
            try:
                stop = self._evaluate()
            except Exception as exc:  # a rule bug must not fail the job
                log.warning("insights: rules not evaluated: %s", reason(exc))
        flag = float(stop is not None)
        if loop.rt.world_size > 1:
            flag = loop.all_sum([flag])[0]
        if flag:
            raise InsightStop(f"{stop.rule}: {stop.message}; training stopped by {stop.rule}_stop=true, no model written"
                              if stop is not None else "an insights rule stopped training on rank 0; no model written")

    def _evaluate(self):
        from .records import load_records
        from .rules import evaluate_rules
        findings = evaluate_rules(load_records(self.out), self.params)
        for finding in findings:
            if finding.triggered and finding.rule not in self.logged:
                self.logged.add(finding.rule)
                log.warning(finding.log_line())
        return next((f for f in findings if f.stop), None)

    def after_train(self, loop: LoopState) -> None:
        if not loop.rt.is_main:
            return
        try:
            from .report import write_report
            from .rules import Finding
            html, facts = write_report(self.out, self.params, draw=self.draw)
            for row in json.loads(facts.read_text())["rules"]:
                finding = Finding(**row)
                if finding.triggered and finding.rule not in self.logged:
                    self.logged.add(finding.rule)
                    log.warning(finding.log_line())
            if html is not None:
                log.info("insights report written to %s", html)
            else:
                log.info("insights findings written to %s; draw the report with: imgcls report %s", facts, self.out)
        except Exception as exc:  # the job's own result matters more than its report
            log.warning("insights: report not written: %s", reason(exc))  # one line, bounded
