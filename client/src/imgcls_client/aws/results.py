"""A SageMaker tuning job's results in the local study's format (imgcls_client.results), with
per-epoch curves from each training job's own history.csv (in its output.tar.gz), not CloudWatch's
one-minute averages."""
from __future__ import annotations

import csv
import io
import sys
import tarfile
from pathlib import Path

from imgcls.errors import UserError

from ..results import TrialResult, curve_metric, write_results
from ..spec import TuningSpec, load_spec, parse_spec
from .commands import list_tuning_training_jobs

HISTORY_CSV = "history.csv"
MAX_HISTORY_BYTES = 10 * 2**20
SCALES = {"Logarithmic": "log", "Linear": "linear", "Auto": "linear", "ReverseLogarithmic": "linear"}


def spec_from_tuning_job(d: dict) -> TuningSpec:
    """The spec a tuning job ran, rebuilt from DescribeHyperParameterTuningJob."""
    config = d["HyperParameterTuningJobConfig"]
    ranges = config.get("ParameterRanges", {})
    parameters = {}
    for r in ranges.get("ContinuousParameterRanges", []):
        parameters[r["Name"]] = {"type": "continuous", "min": float(r["MinValue"]), "max": float(r["MaxValue"]),
                                 "scale": SCALES.get(r.get("ScalingType", "Auto"), "linear")}
    for r in ranges.get("IntegerParameterRanges", []):
        parameters[r["Name"]] = {"type": "integer", "min": int(r["MinValue"]), "max": int(r["MaxValue"]),
                                 "scale": SCALES.get(r.get("ScalingType", "Auto"), "linear")}
    for r in ranges.get("CategoricalParameterRanges", []):
        parameters[r["Name"]] = {"type": "categorical", "values": [_number_or_text(v) for v in r["Values"]]}
    static = {k: v for k, v in d.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {}).items()
              if not k.startswith(("_", "sagemaker_"))}
    if config["Strategy"] == "Hyperband":
        static.pop("early-stopping-patience", None)  # the spec adds it back
    objective = config["HyperParameterTuningJobObjective"]
    limits = config.get("ResourceLimits", {})
    budget = {"max_parallel": limits.get("MaxParallelTrainingJobs", 1)}
    if config["Strategy"] != "Grid":  # Grid: SageMaker may leave it out; the spec counts the combinations
        budget["max_trials"] = limits.get("MaxNumberOfTrainingJobs", 1)
    if limits.get("MaxRuntimeInSeconds"):
        budget["max_runtime_s"] = limits["MaxRuntimeInSeconds"]
    raw = {"objective": {"metric": objective["MetricName"], "direction": objective["Type"].lower()},
           "parameters": parameters, "static": static, "strategy": config["Strategy"],
           "early_stopping": config.get("TrainingJobEarlyStoppingType", "Off"), "budget": budget}
    if config.get("RandomSeed") is not None:
        raw["seed"] = config["RandomSeed"]
    return parse_spec(raw, source=f"tuning job {d['HyperParameterTuningJobName']}")


def _number_or_text(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def typed_params(spec: TuningSpec, tuned: dict[str, str]) -> dict:
    """TunedHyperParameters (strings) back in the spec's types."""
    out = {}
    for name, text in tuned.items():
        p = spec.parameters.get(name)
        if p is None:
            continue
        if p.type == "integer":
            out[name] = int(float(text))
        elif p.type == "continuous":
            out[name] = float(text)
        else:
            out[name] = next((v for v in p.values if str(v).lower() == text.lower()), text)
    return out


def read_history(tar_bytes: bytes) -> list[dict[str, str]]:
    """history.csv out of an output.tar.gz, read in memory (nothing extracted to disk)."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
        for member in tar:
            if member.isfile() and Path(member.name).name == HISTORY_CSV and member.size <= MAX_HISTORY_BYTES:
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                return list(csv.DictReader(io.StringIO(text)))
    return []


def curve_from_history(rows: list[dict[str, str]], metric: str) -> list[tuple[int, float]]:
    points = []
    for row in rows:
        try:
            points.append((int(row["epoch"]), float(row[metric])))
        except (KeyError, TypeError, ValueError):
            continue
    return points


def _output_tar_uri(job: dict) -> str:
    base = job["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{job['TrainingJobName']}/output/output.tar.gz"


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def trial_row(spec: TuningSpec, tuning_name: str, summary: dict, history: list[dict[str, str]]) -> TrialResult:
    name = summary["TrainingJobName"]
    status = summary["TrainingJobStatus"]
    objective = summary.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    reason = summary.get("FailureReason", "")
    if status == "Completed":
        state = "COMPLETE" if summary.get("ObjectiveStatus", "Succeeded") == "Succeeded" and objective is not None else "FAIL"
        if state == "FAIL" and not reason:
            reason = f"no {spec.objective_metric} line in the log"
    elif status == "Stopped":
        state = "PRUNED"  # stopped early by the tuner (early stopping, Hyperband) or by a user
    elif status == "Failed":
        state = "FAIL"
    else:
        state = "RUNNING"
    start, end = summary.get("TrainingStartTime"), summary.get("TrainingEndTime")
    seconds = (end - start).total_seconds() if start and end else None
    curve = curve_from_history(history, curve_metric(spec.objective_metric))
    return TrialResult(trial=name.removeprefix(f"{tuning_name}-"), params=typed_params(spec, summary.get("TunedHyperParameters", {})),
                       objective=objective, status=state, epochs=len(history) or None, seconds=seconds,
                       reason=" ".join(reason.split())[:200], curve=curve)


def pull_results(ctx, tuning_name: str, out: Path, *, spec_path: str | None = None, curves: bool = True,
                 study_dir: Path | None = None) -> int:
    from botocore.exceptions import ClientError
    sm, s3 = ctx.client("sagemaker"), ctx.client("s3")
    description = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_name)
    spec = load_spec(spec_path) if spec_path else spec_from_tuning_job(description)
    summaries = list_tuning_training_jobs(sm, tuning_name)
    rows = []
    for i, summary in enumerate(summaries, 1):
        history: list[dict[str, str]] = []
        if curves and summary["TrainingJobStatus"] in ("Completed", "Stopped", "Failed"):
            job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
            if "FailureReason" in job:
                summary = {**summary, "FailureReason": job["FailureReason"]}
            bucket, key = _split_s3(_output_tar_uri(job))
            try:
                history = read_history(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except ClientError as exc:
                print(f"  {summary['TrainingJobName']}: no output.tar.gz ({exc.response.get('Error', {}).get('Code')})", file=sys.stderr)
            except tarfile.TarError as exc:
                print(f"  {summary['TrainingJobName']}: unreadable output.tar.gz ({exc})", file=sys.stderr)
        rows.append(trial_row(spec, tuning_name, summary, history))
        print(f"\r{i}/{len(summaries)} training jobs read", end="", file=sys.stderr, flush=True)
    if summaries:
        print(file=sys.stderr)
    written = write_results(out, spec, rows)
    print(f"tuning job {tuning_name} ({description['HyperParameterTuningJobStatus']}): {len(rows)} training jobs")
    for kind, path in written.items():
        print(f"  wrote {path}")
    if study_dir is not None:
        added = add_to_study(study_dir, spec, rows, tuning_name)
        print(f"  added {added} finished trials to the study in {study_dir}")
    return 0


def add_to_study(study_dir: Path, spec: TuningSpec, rows: list[TrialResult], tuning_name: str) -> int:
    """Finished SageMaker jobs (complete or stopped early) as finished trials of the local study in
    study_dir (`imgcls tune --out DIR`), so its sampler learns from them. The study must be of the same
    spec; a training job already added is skipped, so pulling twice adds nothing. Takes the
    controller's lock: not while `imgcls tune` runs on that folder."""
    import fcntl

    import optuna

    from .. import study as local_study
    db = study_dir / "study.db"
    if not db.exists():
        raise UserError(f"--add-to-study {study_dir}: no study there (run `imgcls tune --out {study_dir}` first)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open(study_dir / "controller.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"imgcls tune is running on {study_dir}; add the jobs once it has stopped") from None
        study = optuna.load_study(study_name=local_study.STUDY_NAME, storage=f"sqlite:///{db}")
        if study.user_attrs.get("spec") != local_study._spec_fingerprint(spec):
            raise UserError(f"the study in {study_dir} ran another spec (objective, strategy, parameters or static values differ) "
                            f"than tuning job {tuning_name}")
        seen = {t.user_attrs.get("sagemaker_training_job") for t in study.get_trials(deepcopy=False)}
        distributions = local_study.distributions(spec)
        states = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}
        added = 0
        for row in rows:
            job = f"{tuning_name}-{row.trial}"
            if row.status not in states or job in seen or set(row.params) != set(distributions):
                continue
            if row.status == "COMPLETE" and row.objective is None:
                continue
            study.add_trial(optuna.trial.create_trial(
                state=states[row.status], value=row.objective if row.status == "COMPLETE" else None,
                params=row.params, distributions=distributions,
                intermediate_values={int(epoch): float(v) for epoch, v in row.curve},
                user_attrs={"sagemaker_training_job": job, "source": f"sagemaker:{tuning_name}", "epochs": row.epochs,
                            "seconds": row.seconds, "curve": [list(p) for p in row.curve]}))
            added += 1
    return added
