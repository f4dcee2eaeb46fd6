"""The tuning spec: what a study and a SageMaker tuning job read; every error names its field."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from imgcls.hyperparams import parse_hyperparameters
from imgcls.metrics import METRIC_DEFINITIONS, METRIC_NAMES, last_values
from imgcls_client.spec import SpecError, default_spec_path, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "objective": {"metric": "valid_loss", "direction": "minimize"},
    "parameters": {"lr": {"type": "continuous", "min": 0.0001, "max": 0.1, "scale": "log"},
                   "batch-size": {"type": "categorical", "values": [16, 32, 64, 128, 256]}},
    "static": {"epochs": 4, "backbone": "resnet50"},
}


def spec_with(**changes):
    data = {**BASE, **changes}
    return parse_spec({k: v for k, v in data.items() if v is not None})


def test_the_issue_example_and_the_shipped_default_load():
    spec = spec_with()
    assert spec.objective_metric == "valid_loss" and spec.direction == "minimize"
    assert spec.parameters["lr"].scale == "log" and spec.parameters["lr"].sagemaker_scaling == "Logarithmic"
    assert spec.parameters["batch-size"].values == (16, 32, 64, 128, 256)
    default = load_spec()
    assert default == load_spec(REPO / "tuning" / "default.yaml").replace(source=default.source)
    assert (default.parameters["lr"].min, default.parameters["lr"].max, default.parameters["lr"].scale) == (0.0001, 0.1, "log")
    assert set(default.parameters) == {"lr", "batch-size", "epochs"}
    assert default.objective_metric == "best_valid_loss"  # the kept epoch, not the last one
    assert default.early_stopping == "Off"  # YAML's bare Off reads as false; the spec takes it as written


def test_objective_defaults_follow_the_strategy():
    assert parse_spec({"parameters": BASE["parameters"]}).objective_metric == "best_valid_loss"
    hyperband = parse_spec({"parameters": BASE["parameters"], "static": {"epochs": 9}, "strategy": "hyperband"})
    assert hyperband.strategy == "Hyperband" and hyperband.objective_metric == "valid_loss"
    assert hyperband.fixed_hyperparameters()["early-stopping-patience"] == 0  # Hyperband stops trials, training does not
    assert "early-stopping-patience" not in spec_with().fixed_hyperparameters()


def test_names_are_normalised_to_the_training_programs():
    spec = spec_with(parameters={"learning_rate": {"type": "continuous", "min": 0.001, "max": 0.1}}, static={"batch_size": 8})
    assert list(spec.parameters) == ["lr"] and spec.static == {"batch-size": 8}


@pytest.mark.parametrize("changes, field, message", [
    ({"objective": {"metric": "val_loss"}}, "objective.metric", "not a metric imgcls prints"),
    ({"objective": {"metric": "valid_accuracy", "direction": "minimize"}}, "objective.direction", "should be maximized"),
    ({"parameters": {"lr": {"type": "continuous", "min": 0.1, "max": 0.01}}}, "parameters.lr.max", "larger than min"),
    ({"parameters": {"weight-decay": {"type": "continuous", "min": 0.0, "max": 0.1, "scale": "log"}}}, "parameters.weight-decay.min", "log scaling needs min > 0"),
    ({"parameters": {"lr": {"type": "continuous", "min": 0.001, "max": 0.1, "scale": "reverse"}}}, "parameters.lr.scale", "not one of"),
    ({"parameters": {"learnig-rate": {"type": "continuous", "min": 0.001, "max": 0.1}}}, "parameters.learnig-rate", "unknown hyperparameter"),
    ({"parameters": {"lr": {"type": "continuous", "min": 0.001, "max": 50}}}, "parameters.lr.max", "out of range"),
    ({"parameters": {"epochs": {"type": "continuous", "min": 1, "max": 5}}}, "parameters.epochs.type", "use type integer"),
    ({"parameters": {"backbone": {"type": "categorical", "values": ["resnet18", "vgg16"]}}}, "parameters.backbone.values[1]", "not one of"),
    ({"parameters": {"lr": {"type": "categorical", "values": [0.1, 0.1]}}}, "parameters.lr.values", "repeat"),
    ({"parameters": {"lr": {"type": "categorical", "values": list(range(1, 32))}}}, "parameters.lr.values", "SageMaker allows 30"),
    ({"parameters": {"lr": {"min": 0.001, "max": 0.1}}}, "parameters.lr.type", "missing"),
    ({"static": {"epochs": 4, "lr": 0.1}}, "static.lr", "also a tuned parameter"),
    ({"static": {"epochs": "four"}}, "static.epochs", "expected an integer"),
    ({"strategy": "Grid"}, "parameters.lr", "categorical parameters only"),
    ({"strategy": "Hyperband", "static": {"backbone": "resnet50"}}, "static.epochs", "Hyperband needs a static epochs"),
    ({"strategy": "Hyperband", "early_stopping": "Auto"}, "early_stopping", "must be Off with Hyperband"),
    ({"strategy": "Hyperband", "static": {"epochs": 4, "early-stopping-patience": 3}}, "static.early-stopping-patience", "must be 0"),
    ({"strategy": "Hyperband", "objective": {"metric": "best_valid_loss"}}, "objective.metric", "per-epoch objective"),
    ({"early_stopping": "Auto", "objective": {"metric": "best_valid_accuracy"}}, "objective.metric", "per-epoch objective"),
    ({"strategy": "Bayes"}, "strategy", "not one of Bayesian, Random, Hyperband, Grid"),
    ({"budget": {"max_trials": 0}}, "budget.max_trials", "out of range"),
    ({"budget": {"max_parallel": 101}}, "budget.max_parallel", "out of range"),
    ({"budget": {"max_runtime_s": 60}}, "budget.max_runtime_s", "out of range"),
    ({"budget": {"trials": 5}}, "budget.trials", "unknown key"),
    ({"paramters": {}}, "paramters", "unknown key"),
])
def test_errors_name_the_field(changes, field, message):
    with pytest.raises(SpecError) as info:
        spec_with(**changes)
    assert info.value.field == field
    assert message in str(info.value) and str(info.value).startswith(f"spec {field}:")


def test_sagemaker_limits_on_counts_and_lengths():
    many = {f"p{i}": {} for i in range(31)}
    with pytest.raises(SpecError, match="SageMaker allows 30") as info:
        spec_with(parameters=many)
    assert info.value.field == "parameters"
    with pytest.raises(SpecError) as info:
        spec_with(parameters={"x" * 300: {"type": "continuous", "min": 1, "max": 2}})
    assert "SageMaker allows 256" in str(info.value)
    with pytest.raises(SpecError, match="longer than 2500") as info:
        spec_with(static={"epochs": 4, "weights": "/w" * 1300})


def test_grid_counts_its_combinations_and_refuses_another_budget():
    grid = {"lr": {"type": "categorical", "values": [0.01, 0.001]}, "batch-size": {"type": "categorical", "values": [16, 32, 64]}}
    assert spec_with(parameters=grid, strategy="Grid").max_trials == 6
    with pytest.raises(SpecError, match="every combination: 6, not 4"):
        spec_with(parameters=grid, strategy="Grid", budget={"max_trials": 4})
    with pytest.raises(SpecError, match="budget.max_trials"):
        spec_with(parameters=grid, strategy="Grid").replace(max_trials=3)


def test_command_line_overrides_are_validated():
    spec = spec_with()
    assert spec.replace(max_trials=7, max_parallel=None).max_trials == 7
    with pytest.raises(SpecError, match="budget.max_parallel"):
        spec.replace(max_parallel=0)


def test_a_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: {lr: [\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec(bad)
    assert info.value.field == "file"
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_loading_a_spec_imports_no_torch(tmp_path):
    import subprocess
    code = f"import sys; from imgcls_client.spec import load_spec; load_spec({str(default_spec_path())!r}); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ---- the metric lines the objective is read from

def test_best_metrics_are_defined_and_read_with_the_last_match_rule():
    assert {"best_valid_loss", "best_valid_accuracy"} <= set(METRIC_NAMES)
    log = [
        "epoch=1/3 train_loss=1.200000 train_accuracy=0.400000 valid_loss=0.900000 valid_accuracy=0.500000 epoch_seconds=2.0",
        "epoch 2/3 step 4/4 loss=0.8 lr=0.001",
        "epoch=2/3 train_loss=1.000000 train_accuracy=0.500000 valid_loss=0.700000 valid_accuracy=0.600000 epoch_seconds=2.0",
        "epoch=3/3 train_loss=0.900000 train_accuracy=0.600000 valid_loss=0.800000 valid_accuracy=0.550000 epoch_seconds=2.0",
        "final test_loss=0.750000 test_accuracy=0.580000",
        "best epoch=2 best_valid_loss=0.700000 best_valid_accuracy=0.600000",
    ]
    values = last_values(log, METRIC_DEFINITIONS)
    assert values["valid_loss"] == 0.8  # the last epoch: what a tuner ranks valid_loss by
    assert values["best_valid_loss"] == 0.7 and values["best_valid_accuracy"] == 0.6  # the kept epoch
    assert values["test_loss"] == 0.75
    assert "best_valid_loss" not in last_values(log[:4], METRIC_DEFINITIONS)
    assert last_values(["epoch=1/1 valid_loss=nan"], METRIC_DEFINITIONS) == {}


def test_a_study_best_json_is_accepted_by_training_as_it_is(tmp_path):
    from imgcls_client.results import TrialResult, write_results
    spec = spec_with()
    rows = [TrialResult("0", {"lr": 0.01, "batch-size": 32}, 0.9, "COMPLETE", 4, 10.0),
            TrialResult("1", {"lr": 0.001, "batch-size": 64}, 0.5, "COMPLETE", 4, 11.0),
            TrialResult("2", {"lr": 0.05, "batch-size": 16}, None, "FAIL", 0, 1.0, reason="out of memory")]
    written = write_results(tmp_path, spec, rows)
    import json
    best = json.loads(written["best"].read_text())
    assert best == {"epochs": "4", "backbone": "resnet50", "lr": "0.001", "batch-size": "64"}
    hp = parse_hyperparameters(best)
    assert (hp.lr, hp.batch_size, hp.epochs) == (0.001, 64, 4)
    table = written["md"].read_text()
    assert "| **1** | **0.001** | **64** | **0.5** | **COMPLETE** |" in table and "out of memory" in table
    assert written["csv"].read_text().splitlines()[0] == "trial,lr,batch-size,valid_loss,status,epochs,seconds,reason"


def test_results_plots_draw_categorical_values_as_typed(tmp_path):
    from imgcls_client.results import TrialResult, write_results
    weights = ["none", "w/$a^$.pth"]  # a path matplotlib would read as mathtext
    spec = spec_with(parameters={"weights": {"type": "categorical", "values": weights}})
    rows = [TrialResult(str(i), {"weights": w}, 0.9 - 0.1 * i, "COMPLETE", 4, 10.0) for i, w in enumerate(weights)]
    written = write_results(tmp_path, spec, rows)
    for key in ("objective", "slices"):
        assert written[key].read_bytes().startswith(b"\x89PNG")


def test_yaml_booleans_become_the_words_the_user_wrote():
    spec = parse_spec(yaml.safe_load("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nstatic: {amp: off, epochs: 2}\n"))
    assert spec.static["amp"] == "off"
    with pytest.raises(SpecError, match="quote the value") as info:
        parse_spec(yaml.safe_load("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nstatic: {optimizer: yes}\n"))
    assert info.value.field == "static.optimizer"


# ---- pruning rules (the real study test shows a pruned trial end to end)

def _study_with(spec, curves):
    import optuna
    from optuna.distributions import FloatDistribution
    from imgcls_client.study import make_pruner
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.direction, pruner=make_pruner(spec))
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 0.1, log=True)},
                                                  value=curve[-1], intermediate_values=dict(enumerate(curve, 1))))
    return study


def test_auto_early_stopping_is_sagemakers_median_of_running_averages():
    spec = spec_with(early_stopping="Auto")
    # running averages up to epoch 2: 1.5, 2.5, 3.5 -> median 2.5; the epoch-2 values alone have median 2.0
    study = _study_with(spec, [[2.0, 1.0, 0.5], [3.0, 2.0, 1.0], [5.0, 2.0, 1.5]])
    trial = study.ask()
    trial.report(2.0, 1)
    assert not trial.should_prune()  # 2.0 < 3.0 (epoch 1: the averages are the values)
    trial.report(2.2, 2)
    assert not trial.should_prune()  # 2.2 < 2.5: kept, where Optuna's MedianPruner (2.2 > 2.0) would stop it
    other = study.ask()
    other.report(2.6, 1)
    assert not other.should_prune()
    other.report(2.6, 2)
    assert other.should_prune()  # 2.6 > 2.5
    maximize = _study_with(spec_with(early_stopping="Auto", objective={"metric": "valid_accuracy"}), [[0.5, 0.7], [0.4, 0.6]])
    worse = maximize.ask()
    worse.report(0.3, 1)
    assert worse.should_prune()


def test_no_early_stopping_never_prunes_and_hyperband_uses_epochs_as_resource():
    import optuna
    from imgcls_client.study import make_pruner
    study = _study_with(spec_with(), [[1.0, 0.5]])
    trial = study.ask()
    trial.report(100.0, 1)
    assert not trial.should_prune()
    hyperband = make_pruner(spec_with(strategy="Hyperband", static={"epochs": 9}))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9


def test_exponent_without_a_dot_is_a_number_in_yaml_specs(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-5` as a string; a spec must still take it as the number the user wrote."""
    path = tmp_path / "spec.yaml"
    path.write_text("parameters:\n  lr: {type: continuous, min: 1e-5, max: 1e-1, scale: log}\n")
    lr = load_spec(path).parameters["lr"]
    assert (lr.min, lr.max) == (1e-5, 0.1)
    with pytest.raises(SpecError, match="parameters.lr.min"):
        parse_spec({"parameters": {"lr": {"type": "continuous", "min": "fast", "max": 0.1}}})


# ---- hostile spec files: every refusal is one short line that names the field (or the file's line), and fast

MAX_MESSAGE = 400  # longer than any real message; a value echoed whole (a 1 MB line) is far longer
AWS_TUNE_ARGS = ["--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgcls:1", "--role", "arn:aws:iam::123456789012:role/r",
                 "--train", "s3://b/t/", "--output-path", "s3://b/o/", "--dry-run"]


def _entry_points(tmp_path, spec: Path) -> dict[str, list[str]]:
    """The two commands that load a spec, as a user types them (the spec is read before anything else happens)."""
    return {"tune": ["tune", "--spec", str(spec), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "study")],
            "aws tune": ["aws", "tune", "--spec", str(spec), *AWS_TUNE_ARGS]}


@pytest.fixture
def no_aws(monkeypatch):
    """Should a spec load after all, the AWS side gets fake keys and an endpoint where nothing listens."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)


def _refusal(capsys, argv: list[str]) -> str:
    from imgcls.cli import main
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", (rc, out[:500], err[:500])
    assert err.startswith("error: spec ") and err.count("\n") == 1 and "Traceback" not in err, err[:500]
    assert len(err) <= MAX_MESSAGE, f"{len(err)} characters: {err[:300]}"
    return err.strip()


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("text, field, message", [
    ("budget: {max_trials: .inf}", "budget.max_trials", "expected an integer, got inf"),
    ("budget: {max_parallel: .nan}", "budget.max_parallel", "expected an integer, got nan"),
    ("seed: -.inf", "seed", "expected an integer, got -inf"),
    ("parameters: {epochs: {type: integer, min: .inf, max: 3}}", "parameters.epochs.min", "expected an integer"),
    ("parameters: {epochs: {type: integer, min: -1.0e+30, max: 3}}", "parameters.epochs.min", "out of range [1, 1000]"),
    ("parameters: {epochs: {type: integer, min: 1, max: 1.0e+30}}", "parameters.epochs.max", "out of range [1, 1000]"),
    ("static: {epochs: 1.0e+400}", "static.epochs", "inf is out of range [1, 1000]"),
    (f"objective: {{metric: {HUGE}}}", "objective.metric", "'xxxxx"),
    (f"objective: {HUGE}", "objective", "expected a mapping, got str 'xxxxx"),
    (f"strategy: {HUGE}", "strategy", "is not one of Bayesian"),
    (f"early_stopping: [{HUGE}]", "early_stopping", "is not one of Off, Auto"),
    (f"budget: {{max_trials: {HUGE}}}", "budget.max_trials", "expected an integer, got 'xxxxx"),
    (f"seed: {HUGE}", "seed", "expected an integer"),
    (f"parameters: {{lr: {HUGE}}}", "parameters.lr", "expected a mapping, got str"),
    (f"parameters: {{lr: {{type: continuous, min: {HUGE}, max: 0.1}}}}", "parameters.lr.min", "expected a finite number"),
    (f"parameters: {{lr: {{type: {HUGE}}}}}", "parameters.lr.type", "is not one of continuous"),
    (f"parameters: {{backbone: {{type: categorical, values: [[{HUGE}]]}}}}", "parameters.backbone.values[0]", "expected one value"),
    (f"parameters: {{lr: {{type: continuous, min: 0.001, max: 0.1}}}}\nstatic: {{hflip: {HUGE}}}", "static.hflip", "2500 characters"),
    (f"parameters: {{lr: {{type: continuous, min: 0.001, max: 0.1}}}}\nstatic: {{backbone: [{HUGE}]}}", "static.backbone", "expected one value"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nstatic: {batch_size: 8, batch-size: 16}", "static.batch-size", "same hyperparameter as batch-size"),
])
@pytest.mark.parametrize("command", ["tune", "aws tune"])
def test_a_bad_value_is_one_short_line_naming_its_field(capsys, tmp_path, no_aws, command, text, field, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\n" + text if not text.startswith("parameters") else text)
    line = _refusal(capsys, _entry_points(tmp_path, spec)[command])
    assert line.startswith(f"error: spec {field}: ") and message in line, line[:300]


@pytest.mark.parametrize("text, message", [  # "? KEY" is YAML for a key longer than 1024 characters
    (f"parameters:\n  ? {HUGE}\n  : {{}}\n", "spec parameters.xxxxx"),
    (f"parameters: {{lr: {{type: continuous, min: 0.001, max: 0.1}}}}\nbudget:\n  ? {HUGE}\n  : 1\n", "spec budget.xxxxx"),
    (f"? {HUGE}\n: 1\n", "spec xxxxx"),
])
def test_a_huge_key_is_named_by_its_start(capsys, tmp_path, no_aws, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert _refusal(capsys, _entry_points(tmp_path, spec)["tune"]).startswith(f"error: {message}")


@pytest.mark.parametrize("text, message", [
    ("parameters:\n  lr: {type: continuous, min: 0.001, max: 0.1}\n  lr: {type: continuous, min: 0.01, max: 0.1}\n",
     "line 3: key lr appears twice in one mapping (first on line 2)"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nstatic: {epochs: 2}\nstatic: {epochs: 3}\n",
     "line 3: key static appears twice in one mapping (first on line 2)"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nbudget: {max_trials: 3, max_trials: 5}\n",
     "line 2: key max_trials appears twice in one mapping (first on line 2)"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1, min: 0.01}}\n", "line 1: key min appears twice"),
    ("parameters:\n  lr:\n    <<: {type: continuous, min: 0.001}\n    max: 0.1\n", "line 3: merge keys (<<) are not allowed in a spec"),
    ("parameters:\n  lr: &range {type: continuous, min: 0.001, max: 0.1}\n  head-lr: *range\n",
     "line 2: YAML anchors and aliases (&name, *name) are not allowed in a spec"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nseed: " + "7" * 5000 + "\n", "line 2: cannot read this value"),
    ("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\nseed: 2024-13-45\n", "line 2: cannot read this value"),
    ("parameters: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
@pytest.mark.parametrize("command", ["tune", "aws tune"])
def test_yaml_a_spec_should_not_use_is_refused_with_its_line(capsys, tmp_path, no_aws, command, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    line = _refusal(capsys, _entry_points(tmp_path, spec)[command])
    assert line.startswith(f"error: spec file: {spec}") and message in line, line[:300]


def test_python_tags_are_refused_and_never_run(capsys, tmp_path, no_aws):
    marker = tmp_path / "ran"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"parameters: {{lr: {{type: continuous, min: 0.001, max: 0.1}}}}\nstatic: !!python/object/apply:os.system [touch {marker}]\n")
    for argv in _entry_points(tmp_path, spec).values():
        line = _refusal(capsys, argv)
        assert line == f"error: spec file: {spec} line 2: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed in a spec"
    assert not marker.exists()


def test_a_spec_file_that_is_too_big_or_not_text_is_refused(capsys, tmp_path, no_aws):
    big = tmp_path / "big.yaml"
    big.write_text("parameters: {lr: {type: continuous, min: 0.001, max: 0.1}}\n" + "#" * (1 << 20) + "\n")
    assert "larger than 1 MiB" in _refusal(capsys, _entry_points(tmp_path, big)["tune"])
    assert "larger than 1 MiB" in _refusal(capsys, _entry_points(tmp_path, Path("/dev/zero"))["tune"])  # never read to the end
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"parameters: \xff\xfe\n")
    assert "not UTF-8 text" in _refusal(capsys, _entry_points(tmp_path, binary)["tune"])


BILLION_LAUGHS = """\
objective: {metric: valid_loss}
parameters:
  lr: [&a [lol, lol, lol, lol, lol, lol, lol, lol, lol],
       &b [*a, *a, *a, *a, *a, *a, *a, *a, *a],
       &c [*b, *b, *b, *b, *b, *b, *b, *b, *b],
       &d [*c, *c, *c, *c, *c, *c, *c, *c, *c],
       &e [*d, *d, *d, *d, *d, *d, *d, *d, *d],
       &f [*e, *e, *e, *e, *e, *e, *e, *e, *e],
       &g [*f, *f, *f, *f, *f, *f, *f, *f, *f],
       &h [*g, *g, *g, *g, *g, *g, *g, *g, *g],
       &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]]
static: {epochs: *i}
"""


@pytest.mark.parametrize("command", ["tune", "aws tune"])
def test_an_alias_bomb_is_refused_at_once_without_expanding_it(tmp_path, command):
    """9^9 'lol's shared through aliases: safe_load is instant, but anything that formats the value
    expands it to gigabytes. The child runs under a 1 GiB address-space limit, so a regression fails
    with a MemoryError in a few seconds instead of filling the machine."""
    import subprocess
    import textwrap
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BILLION_LAUGHS)
    code = textwrap.dedent(f"""
        import resource, sys, time, tracemalloc
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from imgcls.cli import main
        import imgcls_client.aws.cli, imgcls_client.aws.commands, imgcls_client.cli, imgcls_client.spec, yaml  # imports: not measured
        tracemalloc.start()
        started = time.perf_counter()
        rc = main({_entry_points(tmp_path, spec)[command]!r})
        print(f"MEASURED seconds={{time.perf_counter() - started:.3f}} peak={{tracemalloc.get_traced_memory()[1]}}", file=sys.stderr)
        sys.exit(rc)
    """)
    env = {**__import__("os").environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert lines[0] == f"error: spec file: {spec} line 3: YAML anchors and aliases (&name, *name) are not allowed in a spec; write the value out"
    seconds, peak = (float(part.split("=")[1]) for part in lines[1].split()[1:])
    assert seconds < 2.0 and peak < 20_000_000, lines[1]  # the parser and lazy imports take ~4 MB; expanded, the bomb takes GBs
