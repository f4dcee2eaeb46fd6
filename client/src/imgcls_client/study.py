"""Local studies: one controller process owns an Optuna study; every trial is a real `imgcls train` run.

- Storage: SQLite in --out (study.db), written by this controller only; a lock file keeps a second
  controller off the same folder. Killed at any moment, the same command resumes. A trial left
  RUNNING by the killed controller is recorded from its folder when it trained to the end (its model
  or its failure file was written); any other is marked interrupted, not counted against the budget,
  and run again with the same values. A seeded sampler gets seed + trials already in the study, so a
  resumed study does not draw the values its earlier sessions drew.
- Trials: each in its own process with its own folder (trials/NNNN: log.txt, model/, output/ with
  the failure file and checkpoints/), so no checkpoint is ever shared. Started by forking a warm
  zygote (imgcls_client.zygote) or, with fork=False, as a fresh `python -m imgcls train`.
- Metrics: the controller reads the trial's log with imgcls.metrics.METRIC_DEFINITIONS, the regexes
  SageMaker is given; the objective is the last value matched (SageMaker's rule). Each epoch line
  reports the per-epoch objective to the pruner; a pruned trial gets SIGTERM, then SIGKILL.
- Pruning: early_stopping Auto = SageMaker's median rule (RunningMedianPruner); strategy Hyperband =
  Optuna's HyperbandPruner over epochs.
- Threads: cores are split among parallel trials (OMP_NUM_THREADS and torch.set_num_threads).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.errors import UserError
from imgcls.metrics import METRIC_DEFINITIONS, last_values, metric_values
from imgcls.names import CONFIG_FILE

from .results import TrialResult, best_trial, curve_metric, trial_counts, write_results
from .spec import TuningSpec, as_hyperparameter_text, grid_points

STUDY_NAME = "imgcls"
STOP_GRACE_S = 10.0
PLOT_EVERY_S = 60.0
_EPOCH = re.compile(r"^epoch=(\d+)/\d+ ")


# ---------------------------------------------------------------- pruners

def _running_median_pruner(direction: str, n_startup_trials: int = 1, n_warmup_steps: int = 0):
    import optuna

    class RunningMedianPruner(optuna.pruners.BasePruner):
        """SageMaker's Auto early stopping: after each epoch, stop the trial if its objective is worse than
        the median of the earlier trials' running averages of the objective up to that epoch."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or step <= n_warmup_steps:
                return False
            earlier = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
                       if t.number < trial.number]
            averages = []
            for t in earlier:
                upto = [v for s, v in t.intermediate_values.items() if s <= step and math.isfinite(v)]
                if upto:
                    averages.append(sum(upto) / len(upto))
            if len(averages) < n_startup_trials:
                return False
            averages.sort()
            mid = len(averages) // 2
            median = averages[mid] if len(averages) % 2 else (averages[mid - 1] + averages[mid]) / 2
            value = trial.intermediate_values[step]
            return value > median if direction == "minimize" else value < median

    return RunningMedianPruner()


def make_pruner(spec: TuningSpec):
    import optuna
    if spec.strategy == "Hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(spec.static["epochs"]), reduction_factor=3)
    if spec.early_stopping == "Auto":
        return _running_median_pruner(spec.direction)
    return optuna.pruners.NopPruner()


def make_sampler(spec: TuningSpec, trials_so_far: int = 0):
    """The spec's sampler. A seeded one restarts its random stream in every session, so a resumed study
    seeds it with seed + trials_so_far: every session that drew values created trials, so no two
    sessions share a stream (and none re-draws an earlier session's values)."""
    import optuna
    seed = None if spec.seed is None else spec.seed + trials_so_far
    if spec.strategy == "Bayesian":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, spec.max_trials // 4)))
    return optuna.samplers.RandomSampler(seed=seed)  # Random, Hyperband; Grid's points are enqueued in order


def distributions(spec: TuningSpec) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.values))
        elif p.type == "integer":
            out[name] = IntDistribution(int(p.min), int(p.max), log=p.scale == "log")
        else:
            out[name] = FloatDistribution(float(p.min), float(p.max), log=p.scale == "log")
    return out


# ---------------------------------------------------------------- trial processes

# What a local trial skips unless the spec's `static` says otherwise: a trial is never resumed (an
# interrupted one runs again from the start), and its insights page is drawn on demand (`imgcls report`;
# the best trial's when the study ends). Not part of the trial's hyperparameters: the best ones stay as trained.
TRIAL_SETTINGS = {"checkpoints": "off", "insights-report": "off"}


def trial_argv(data: Path, trial_dir: Path, hyperparameters: dict[str, str]) -> list[str]:
    """`imgcls train` arguments for one trial: its own model and output folders."""
    argv = ["train", "--data", str(data), "--model-dir", str(trial_dir / "model"), "--output-dir", str(trial_dir / "output")]
    for name, value in {**TRIAL_SETTINGS, **hyperparameters}.items():
        argv += [f"--{name}", value]
    return argv


def draw_trial_report(trial_output: Path) -> Path | None:
    """The insights page of one trial (`imgcls report`, no torch), or None when it has no insight files."""
    data = trial_output / "data"
    if (data / "report.html").is_file():
        return data / "report.html"
    if not (data / "insights").is_dir():
        return None
    done = subprocess.run([sys.executable, "-m", "imgcls", "report", str(data)], capture_output=True, text=True)  # noqa: S603 - imgcls report on our own trial folder
    return data / "report.html" if done.returncode == 0 else None


def trial_folder(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


def training_ended(trial_dir: Path) -> int | None:
    """How a trial whose exit nobody saw ended, from its folder: 0 when it wrote its model (the last
    thing training writes), 1 when it wrote its failure file, None when it was still training."""
    if (trial_dir / "output" / "failure").exists():
        return 1
    if (trial_dir / "model" / CONFIG_FILE).exists():
        return 0
    return None


def _epoch_point(line: str, metric: str) -> tuple[int, float | None] | None:
    """(epoch, the metric's value or None) for an `epoch=N/M ...` line, None for any other line."""
    m = _EPOCH.match(line)
    if not m:
        return None
    return int(m.group(1)), metric_values(line, METRIC_DEFINITIONS).get(metric)


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class ForkLauncher:
    """Trials forked from a warm zygote that imported torch once."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "imgcls_client.zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buffer = b""
        self._events: list[dict] = []
        self.ready: dict | None = None
        self.pids: dict[int, int] = {}

    def _read(self, wait_s: float = 0.0) -> None:
        """Take in the zygote's events: waits up to wait_s for the first, then reads what is there."""
        import select
        timeout = wait_s
        while True:
            readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not readable:
                return
            timeout = 0.0
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise UserError(f"the trial starter (zygote) ended with code {self.proc.wait()}; run with --no-fork to see why")
            self._buffer += chunk
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                event = json.loads(line)
                if event["event"] == "ready":
                    self.ready = event
                elif event["event"] == "started":
                    self.pids[event["id"]] = event["pid"]
                else:
                    self._events.append(event)

    def start(self, rid: int, argv: list[str], log: Path, threads: int) -> int:
        request = {"id": rid, "argv": argv, "log": str(log), "env": thread_env(threads), "threads": threads}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        while rid not in self.pids:
            self._read(wait_s=1.0)
            if self.proc.poll() is not None:
                self._read()
        return self.pids[rid]

    def poll(self, wait_s: float) -> list[tuple[int, int]]:
        self._read(wait_s)
        done = [(e["id"], e["code"]) for e in self._events]
        self._events.clear()
        return done

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProcessLauncher:
    """Trials as fresh `python -m imgcls train` processes (pays the imports every time)."""

    def __init__(self):
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, rid: int, argv: list[str], log: Path, threads: int) -> int:
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "imgcls", *argv], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # noqa: S603 - imgcls train, argv from the validated spec
                                    env={**os.environ, **thread_env(threads)}, preexec_fn=_die_with_parent)
        self.procs[rid] = proc
        return proc.pid

    def poll(self, wait_s: float) -> list[tuple[int, int]]:
        time.sleep(wait_s)
        done = [(rid, p.returncode) for rid, p in self.procs.items() if p.poll() is not None]
        for rid, _ in done:
            del self.procs[rid]
        return done

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()
            p.wait()


def _die_with_parent() -> None:
    from .zygote import die_with_parent
    die_with_parent()


# ---------------------------------------------------------------- the controller

@dataclass
class Running:
    trial: object  # optuna.trial.Trial
    dir: Path
    pid: int
    started: float
    offset: int = 0
    partial: str = ""
    lines: list[str] = field(default_factory=list)
    epochs: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    pruned_at: int | None = None
    term_sent: float | None = None
    stop_reason: str = ""


class Progress:
    """One line per trial event on stderr; a tqdm bar over the trial budget when stderr is a terminal."""

    def __init__(self, total: int, done: int):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="trial", file=sys.stderr, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def finished(self, best: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(best)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _spec_fingerprint(spec: TuningSpec) -> dict:
    """What a resumed study must share with the one on disk (the budget may change)."""
    return {"objective": [spec.objective_metric, spec.direction], "strategy": spec.strategy, "early_stopping": spec.early_stopping,
            "parameters": {n: [p.type, p.min, p.max, list(p.values), p.scale] for n, p in spec.parameters.items()},
            "static": as_hyperparameter_text(spec.fixed_hyperparameters())}


class Study:
    def __init__(self, spec: TuningSpec, data: Path, out: Path, fork: bool = True):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.spec, self.data, self.out, self.fork = spec, Path(data), Path(out), fork
        if not self.data.exists():
            raise UserError(f"--data {self.data} does not exist")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / "controller.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another imgcls tune is running on {self.out}; wait for it or use another --out") from None
        # cores shared out among parallel trials, unless the user pinned OMP_NUM_THREADS (e.g. 1 on a busy machine)
        pinned = os.environ.get("OMP_NUM_THREADS", "")
        self.threads = int(pinned) if pinned.isdigit() and int(pinned) > 0 else max(1, (os.cpu_count() or 1) // spec.max_parallel)
        storage = optuna.storages.RDBStorage(f"sqlite:///{self.out / 'study.db'}", engine_kwargs={"connect_args": {"timeout": 30}})
        direction = spec.direction
        existing = {s.study_name: s.n_trials for s in optuna.study.get_all_study_summaries(storage)}
        self.study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                                         sampler=make_sampler(spec, trials_so_far=existing.get(STUDY_NAME, 0)),
                                         pruner=make_pruner(spec), load_if_exists=True)
        fingerprint = _spec_fingerprint(spec)
        if STUDY_NAME not in existing:
            self.study.set_user_attr("spec", fingerprint)
        elif self.study.user_attrs.get("spec") != fingerprint:
            raise UserError(f"{self.out} holds a study of another spec (objective, strategy, parameters or static values differ); "
                            "use another --out, or the spec it was started with")
        self.recorded: list[TrialResult] = []  # trials that had ended unseen, recorded on resume
        self.resumed = self._recover_interrupted()

    def _recover_interrupted(self) -> int:
        """Trials a killed controller left RUNNING: record those that ended (or were pruned) from their
        folders; mark the others interrupted (FAIL, not counted) and queue their values again."""
        T = self.optuna.trial.TrialState
        count = 0
        for t in self.study.get_trials(deepcopy=False, states=(T.RUNNING,)):
            if self._record_from_folder(t):
                self.recorded.append(_result(self.study.trials[t.number], self.spec))
                continue
            self._set_attrs(t, interrupted=True, failure="interrupted: the study controller stopped; run again")
            self.study.tell(t.number, state=T.FAIL)
            self.study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
            count += 1
        return count

    def _record_from_folder(self, t) -> bool:
        """Tell the study how trial t ended when it trained to the end (its folder says so) or the killed
        controller had already decided to stop it (pruned, out of time); False when it was still training."""
        trial_dir = trial_folder(self.out, t.number)
        pruned_at, stop_reason = t.user_attrs.get("pruned_at"), t.user_attrs.get("stop_reason", "")
        code = training_ended(trial_dir)
        if code is None and not stop_reason:
            return False
        log = trial_dir / "log.txt"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        points = [p for p in (_epoch_point(line, curve_metric(self.spec.objective_metric)) for line in lines) if p is not None]
        points = [p for p in points if pruned_at is None or p[0] <= pruned_at]  # what the pruner saw, as in _read_log
        curve = [(epoch, value) for epoch, value in points if value is not None]
        for epoch, value in curve:  # epochs the controller did not see: the pruner weighs later trials against them
            if epoch not in t.intermediate_values:
                self.study._storage.set_trial_intermediate_value(t._trial_id, epoch, value)
        state, objective, reason, values = self._outcome(trial_dir, lines, code, pruned_at, stop_reason)
        seconds = log.stat().st_mtime - t.datetime_start.timestamp() if log.exists() and t.datetime_start else None
        self._set_attrs(t, seconds=None if seconds is None else round(seconds, 2), epochs=points[-1][0] if points else 0,
                        curve=curve, metrics=values, **({"failure": reason} if reason else {}))
        self._tell(t.number, state, objective)
        return True

    def _set_attrs(self, t, **attrs) -> None:
        """User attributes of a trial this session did not ask for (a FrozenTrial)."""
        for key, value in attrs.items():
            self.study._storage.set_trial_user_attr(t._trial_id, key, value)

    def _tell(self, trial, state, objective: float | None) -> None:
        if state == self.optuna.trial.TrialState.COMPLETE:
            self.study.tell(trial, objective)
        else:
            self.study.tell(trial, state=state)

    def _counted(self) -> int:
        T = self.optuna.trial.TrialState
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(T.COMPLETE, T.PRUNED, T.FAIL))
                   if not t.user_attrs.get("interrupted"))

    # -------------------------------------------------------- one trial

    def _next_grid_point(self) -> dict | None:
        """Grid: every combination once, in the order the spec lists them (re-runs of interrupted trials first)."""
        T = self.optuna.trial.TrialState
        seen = {_key(t.params) for t in self.study.get_trials(deepcopy=False)
                if not (t.state == T.FAIL and t.user_attrs.get("interrupted"))}
        return next((p for p in grid_points(self.spec) if _key(p) not in seen), None)

    def _start(self, launcher) -> Running:
        T = self.optuna.trial.TrialState
        if self.spec.strategy == "Grid" and not self.study.get_trials(deepcopy=False, states=(T.WAITING,)):
            self.study.enqueue_trial(self._next_grid_point())
        trial = self.study.ask(distributions(self.spec))
        trial_dir = trial_folder(self.out, trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        hps = as_hyperparameter_text({**self.spec.fixed_hyperparameters(), **trial.params})
        trial.set_user_attr("dir", str(trial_dir.relative_to(self.out)))
        trial.set_user_attr("hyperparameters", hps)
        argv = trial_argv(self.data, trial_dir, hps)
        pid = launcher.start(trial.number, argv, trial_dir / "log.txt", self.threads)
        values = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        rerun = trial.user_attrs.get("rerun_of")
        self.progress.line(f"trial {trial.number} started: {values}" + (f" (re-run of interrupted trial {rerun})" if rerun is not None else ""))
        return Running(trial=trial, dir=trial_dir, pid=pid, started=time.monotonic())

    def _read_log(self, run: Running) -> None:
        try:
            with open(run.dir / "log.txt", "rb") as f:
                f.seek(run.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        run.offset += len(chunk)
        text = run.partial + chunk.decode(errors="replace")
        *complete, run.partial = text.split("\n")
        per_epoch = curve_metric(self.spec.objective_metric)
        for line in complete:
            run.lines.append(line)
            point = _epoch_point(line, per_epoch)
            if point is None or run.pruned_at is not None:
                continue
            epoch, value = point
            run.epochs = epoch
            if value is None:
                continue
            run.curve.append((epoch, value))
            run.trial.report(value, epoch)
            if run.trial.should_prune():
                run.pruned_at = epoch
                run.trial.set_user_attr("pruned_at", epoch)
                self._stop(run, f"pruned after epoch {epoch}")

    def _stop(self, run: Running, reason: str) -> None:
        run.stop_reason = reason
        run.trial.set_user_attr("stop_reason", reason)  # the decision is final: a resumed study records it, not re-runs
        run.term_sent = time.monotonic()
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _finish(self, run: Running, code: int) -> TrialResult:
        self._read_log(run)
        if run.partial:
            run.lines.append(run.partial)
        seconds = time.monotonic() - run.started
        trial = run.trial
        trial.set_user_attr("seconds", round(seconds, 2))
        trial.set_user_attr("epochs", run.epochs)
        trial.set_user_attr("curve", run.curve)
        state, objective, reason, values = self._outcome(run.dir, run.lines, code, run.pruned_at, run.stop_reason)
        trial.set_user_attr("metrics", values)
        if reason:
            trial.set_user_attr("failure", reason)
        self._tell(trial, state, objective)
        return _result(self.study.trials[trial.number], self.spec)

    def _outcome(self, trial_dir: Path, lines: list[str], code: int | None, pruned_at: int | None, stop_reason: str):
        """(state, objective, reason, last metric values) of a trial that ended with exit code `code`
        or was stopped by the study (stop_reason; pruned_at when pruned)."""
        T = self.optuna.trial.TrialState
        values = last_values(lines, METRIC_DEFINITIONS)
        objective = values.get(self.spec.objective_metric)
        if pruned_at is not None:
            return T.PRUNED, objective, stop_reason, values
        if stop_reason:
            return T.FAIL, objective, stop_reason, values
        if code != 0:
            failure = trial_dir / "output" / "failure"
            reason = failure.read_text().strip() if failure.exists() else (lines[-1] if lines else f"exit code {code}")
            return T.FAIL, objective, reason, values
        if objective is None or not math.isfinite(objective):
            return T.FAIL, objective, f"no {self.spec.objective_metric} in the log (SageMaker: the job did not emit its objective metric)", values
        return T.COMPLETE, objective, "", values

    # -------------------------------------------------------- the loop

    def run(self) -> list[TrialResult]:
        budget = self.spec.max_trials
        deadline = time.monotonic() + self.spec.max_runtime_s if self.spec.max_runtime_s else math.inf
        launcher = ForkLauncher() if self.fork else ProcessLauncher()
        self.progress = Progress(budget, min(budget, self._counted()))
        for result in self.recorded:
            self.progress.line(f"resumed {self.out}: trial {result.trial} had finished before the controller stopped; recorded as "
                               + _outcome_text(result, self.spec.objective_metric))
        if self.resumed:
            self.progress.line(f"resumed {self.out}: {self.resumed} interrupted trial(s) will run again")
        if isinstance(launcher, ForkLauncher):
            launcher._read(wait_s=600)
            if launcher.ready:
                self.progress.line(f"trial starter ready (imports took {launcher.ready['import_s']} s once); "
                                   f"{self.spec.max_parallel} at a time, {self.threads} thread(s) each")
        running: dict[int, Running] = {}
        stopping_all = False
        unwritten, last_plot = False, time.monotonic()
        try:
            while True:
                if time.monotonic() > deadline and not stopping_all:
                    stopping_all = True
                    for run in running.values():
                        self._stop(run, "stopped: the study's max runtime was reached")
                while (not stopping_all and len(running) < self.spec.max_parallel
                       and self._counted() + len(running) < budget and not self._grid_exhausted()):
                    run = self._start(launcher)
                    running[run.trial.number] = run
                if unwritten:  # after the next trials started; plots at most every PLOT_EVERY_S (they cost CPU the trials need)
                    plots = time.monotonic() - last_plot > PLOT_EVERY_S
                    write_results(self.out, self.spec, self.results(), plots=plots)
                    last_plot = time.monotonic() if plots else last_plot
                    unwritten = False
                if not running:
                    break
                for run in running.values():
                    self._read_log(run)
                    if run.term_sent is not None and time.monotonic() - run.term_sent > STOP_GRACE_S:
                        try:
                            os.kill(run.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                for rid, code in launcher.poll(wait_s=0.2):
                    run = running.pop(rid)
                    result = self._finish(run, code)
                    self._report(result)
                    unwritten = True
        finally:
            for run in running.values():  # interrupted (Ctrl-C): these trials stay RUNNING; a resume records or re-runs them
                try:
                    os.kill(run.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            launcher.close()
            self.progress.close()
        return self.results()

    def _grid_exhausted(self) -> bool:
        if self.spec.strategy != "Grid":
            return False
        T = self.optuna.trial.TrialState
        return not self.study.get_trials(deepcopy=False, states=(T.WAITING,)) and self._next_grid_point() is None

    def _report(self, result: TrialResult) -> None:
        rows = self.results()
        best = best_trial(self.spec, rows)
        metric = self.spec.objective_metric
        what = _outcome_text(result, metric)
        best_text = f"best so far: trial {best.trial} {metric}={best.objective:.6g}" if best else "no complete trial yet"
        self.progress.line(f"trial {result.trial} {what} ({result.seconds:.1f} s); {best_text}")
        self.progress.finished(best_text)

    def results(self) -> list[TrialResult]:
        return [_result(t, self.spec) for t in self.study.get_trials(deepcopy=False) if t.state.name != "WAITING"]


def _outcome_text(result: TrialResult, metric: str) -> str:
    return {"COMPLETE": f"complete: {metric}={result.objective:.6g}" if result.objective is not None else "complete",
            "PRUNED": f"pruned at epoch {result.epochs}", "FAIL": f"failed: {result.reason}"}[result.status]


def _result(t, spec: TuningSpec) -> TrialResult:
    status = "INTERRUPTED" if t.state.name == "FAIL" and t.user_attrs.get("interrupted") else t.state.name
    objective = t.value if status == "COMPLETE" else t.user_attrs.get("metrics", {}).get(spec.objective_metric)
    return TrialResult(trial=str(t.number), params=dict(t.params), objective=objective, status=status,
                       epochs=t.user_attrs.get("epochs"), seconds=t.user_attrs.get("seconds"),
                       reason=t.user_attrs.get("failure", ""), curve=[tuple(p) for p in t.user_attrs.get("curve", [])])


def _key(params: dict) -> str:
    return json.dumps(as_hyperparameter_text(params), sort_keys=True)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_study(spec: TuningSpec, data: Path, out: Path, fork: bool = True) -> list[TrialResult]:
    study = Study(spec, data, out, fork=fork)
    started = time.monotonic()
    rows = study.run()
    written = write_results(out, spec, rows)
    best = best_trial(spec, rows)
    print(f"study {out}: {trial_counts(rows)} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if best is not None:
        print(f"best: trial {best.trial} {spec.objective_metric}={best.objective:.6g} "
              + " ".join(f"{k}={_short(v)}" for k, v in best.params.items()), file=sys.stderr)
        report = draw_trial_report(trial_folder(out, int(best.trial)) / "output")
        if report is not None:
            print(f"best trial's insights report: {report} (another trial's: imgcls report {out / 'trials' / 'NNNN' / 'output'})",
                  file=sys.stderr)
    print(f"results: {written['md']}" + (f", {written['best']}" if "best" in written else ""), file=sys.stderr)
    return rows
