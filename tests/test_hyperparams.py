"""Hyperparameter validation: every bad value gets a message that names it."""
import pytest

from imgcls.errors import UserError
from imgcls.hyperparams import HyperParameters, describe, parse_hyperparameters


def test_strings_from_hyperparameters_json_and_json_values_from_sm_hps_agree():
    as_strings = parse_hyperparameters({"epochs": "3", "batch-size": "16", "lr": "0.01", "hflip": "false", "workers": "2"})
    as_json = parse_hyperparameters({"epochs": 3, "batch_size": 16, "learning_rate": 0.01, "hflip": False, "workers": 2})
    assert as_strings == as_json
    assert (as_json.epochs, as_json.batch_size, as_json.lr, as_json.hflip) == (3, 16, 0.01, False)


def test_sagemaker_and_tuner_keys_are_ignored():
    assert parse_hyperparameters({"sagemaker_program": "x", "_tuning_objective_metric": "valid_loss"}) == HyperParameters()


@pytest.mark.parametrize("raw, message", [
    ({"epoch": "3"}, "hyperparameter epoch: unknown name; did you mean epochs?"),
    ({"epochs": "three"}, "hyperparameter epochs: expected an integer, got 'three'"),
    ({"epochs": "2.5"}, "hyperparameter epochs: expected an integer"),
    ({"epochs": "0"}, "hyperparameter epochs: 0 is out of range [1, 1000]"),
    ({"lr": "fast"}, "hyperparameter lr: expected a number"),
    ({"backbone": "vgg16"}, "hyperparameter backbone: 'vgg16' is not one of resnet18"),
    ({"hflip": "maybe"}, "hyperparameter hflip: expected true or false"),
    ({"finetune": "some"}, "hyperparameter finetune: expected head, all or a number of stages"),
])
def test_bad_values_are_named(raw, message):
    with pytest.raises(UserError) as err:
        parse_hyperparameters(raw)
    assert str(err.value).startswith(message)


def test_every_hyperparameter_is_documented_in_the_readme():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, *_ in describe():
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("raw, field, message", [
    ({"epochs": "1e400"}, "epochs", "inf is out of range [1, 1000]"),
    ({"epochs": 1e400}, "epochs", "inf is out of range [1, 1000]"),
    ({"epochs": "-inf"}, "epochs", "-inf is out of range [1, 1000]"),
    ({"epochs": 10**400}, "epochs", "is out of range [1, 1000]"),
    ({"workers": "1e400"}, "workers", "inf is out of range [0, 128]"),
    ({"lr": 10**400}, "lr", "inf is out of range [1e-07, 10.0]"),
    ({"weights": "x" * 1_000_000}, "weights", "1000000 characters; at most 4095"),
    ({"weights": "/opt/ml/input/data/pretrained/" + "w" * 300 + ".pth"}, "weights", "a path component is 304 bytes; at most 255"),
    ({"checkpoint-dir": "/tmp/ck\0pt"}, "checkpoint-dir", "a path cannot contain a NUL character"),
    ({"backbone": "x" * 1_000_000}, "backbone", "1000000 characters; at most 4095"),
    ({"epochs": "9" * 4000}, "epochs", "is out of range [1, 1000]"),
    ({"finetune": "9" * 5000}, "finetune", "5000 characters; at most 4095"),
    ({"finetune": "\u00b2"}, "finetune", "expected head, all or a number of stages, got '\u00b2'"),
    ({"hflip": ["yes"] * 1_000_000}, "hflip", "expected one value, got ['yes', 'yes'"),
    ({"lr": {"a": 1}}, "lr", "expected one value"),
])
def test_extreme_values_get_a_short_message_naming_the_field(raw, field, message):
    with pytest.raises(UserError) as err:
        parse_hyperparameters(raw)
    text = str(err.value)
    assert text.startswith(f"hyperparameter {field}: ") and message in text, text[:300]
    assert len(text) <= 200 and "\n" not in text


def test_an_unknown_huge_name_is_named_by_its_start():
    with pytest.raises(UserError) as err:
        parse_hyperparameters({"epoch" + "s" * 1_000_000: "3"})
    text = str(err.value)
    assert text.startswith("hyperparameter epochsss") and "unknown name" in text and len(text) <= 1500, text[:300]


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "1e400", "hyperparameter epochs: inf is out of range [1, 1000]"),
    ("--weights", "w" * 300 + ".pth", "hyperparameter weights: a path component is 304 bytes; at most 255"),
    ("--weights", "/w" * 600_000, "hyperparameter weights: 1200000 characters; at most 4095"),
])
def test_imgcls_train_refuses_them_in_one_line_before_training(tmp_path, capsys, sample_dataset, flag, value, message):
    from imgcls.cli import main
    rc = main(["train", "--data", str(sample_dataset), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
               flag, value])
    err, reason = capsys.readouterr().err, (tmp_path / "out" / "failure").read_text()  # reason: SageMaker's FailureReason
    assert rc == 2 and reason.startswith(message), reason[:300]
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and len(err) <= 200, err[:300]
