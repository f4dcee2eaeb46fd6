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
