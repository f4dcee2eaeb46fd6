"""SageMaker's job config files, checked before the sagemaker-training toolkit reads them.

The toolkit meets a missing or malformed file with a Python traceback that SageMaker cuts to its
first 1,024 characters, before the cause, and exits 0 when output/ is missing. The image's `train`
(container/entrypoint.sh) runs this module first: one line naming the file and the field goes to
output/failure, and it exits 1. It imports neither torch nor the toolkit, so a bad config fails fast.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from .errors import UserError
from .failure import clear_failure, failure_reason, write_failure
from .logs import configure_logging
from .metrics import printable
from .names import EXTRA_CHANNELS

log = logging.getLogger("imgcls.sagemaker_config")  # the same name when run as __main__

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"  # the toolkit's override of /opt/ml (local runs, tests)
HYPERPARAMETERS = "hyperparameters.json"
RESOURCE_CONFIG = "resourceconfig.json"
INPUT_DATA_CONFIG = "inputdataconfig.json"
CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # SageMaker's ChannelName; the toolkit makes it a folder name
SHOWN_CHARS = 64  # of a name or value from a config file, in a message


def base_dir() -> Path:
    return Path(os.environ.get(BASE_DIR_ENV, "/opt/ml"))


def check_job_config(base: Path) -> None:
    """Raise UserError naming the file and field that the toolkit or our training could not use."""
    config_dir = base / "input" / "config"
    check_hyperparameters(read_config(config_dir / HYPERPARAMETERS))
    check_resource_config(read_config(config_dir / RESOURCE_CONFIG))
    check_input_data_config(read_config(config_dir / INPUT_DATA_CONFIG))


def config_error(file: str, *parts: str) -> UserError:
    return UserError(": ".join([f"input/config/{file}", *parts]))


def shown(text: object) -> str:
    """A name or value from a config file, bounded and safe to log."""
    text = str(text)
    return printable(text[:SHOWN_CHARS]) + ("..." if len(text) > SHOWN_CHARS else "")


def json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    return {dict: "an object", list: "an array"}.get(type(value), "a number")


def read_config(path: Path) -> dict:
    """The file's JSON object (all three files are objects)."""
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise config_error(name, "the file is missing") from None
    except UnicodeDecodeError:
        raise config_error(name, "not UTF-8 text") from None
    except OSError as exc:
        raise config_error(name, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not text.strip():
        raise config_error(name, "the file is empty; expected a JSON object")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise config_error(name, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise config_error(name, "not valid JSON: nested too deeply") from None
    if not isinstance(config, dict):
        raise config_error(name, f"expected a JSON object, got {json_kind(config)}")
    return config


def check_hyperparameters(hyperparameters: dict) -> None:
    for name, value in hyperparameters.items():
        if not isinstance(value, str):
            raise config_error(HYPERPARAMETERS, shown(name), f"expected a string (as SageMaker writes every value), got {json_kind(value)}")
        try:
            json.loads(value)  # as the toolkit does with every value
        except ValueError:
            pass  # the toolkit keeps such a value as the string itself
        except RecursionError:  # the toolkit does not catch this one
            raise config_error(HYPERPARAMETERS, shown(name), "the value nests too deeply") from None


def _field(config: dict, file: str, field: str):
    if field not in config:
        raise config_error(file, field, "missing")
    return config[field]


def _is_host_list(hosts: object) -> bool:
    return isinstance(hosts, list) and bool(hosts) and all(isinstance(h, str) and h for h in hosts)


def check_resource_config(resources: dict) -> None:
    current_host = _field(resources, RESOURCE_CONFIG, "current_host")
    if not isinstance(current_host, str) or not current_host:
        raise config_error(RESOURCE_CONFIG, "current_host", f"expected a host name, got {json_kind(current_host)}")
    if not _is_host_list(_field(resources, RESOURCE_CONFIG, "hosts")):
        raise config_error(RESOURCE_CONFIG, "hosts", "expected a non-empty array of host names")
    if current_host not in resources["hosts"]:  # torchrun's node rank is its place in hosts
        raise config_error(RESOURCE_CONFIG, "current_host", f"{shown(current_host)} is not one of hosts")
    interface = resources.get("network_interface_name", "")
    if not isinstance(interface, str):
        raise config_error(RESOURCE_CONFIG, "network_interface_name", f"expected a string, got {json_kind(interface)}")
    groups = resources.get("instance_groups", [])  # SageMaker writes it; a hand-written local config may not
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("instance_group_name"), str) and _is_host_list(g.get("hosts")) for g in groups):
        raise config_error(RESOURCE_CONFIG, "instance_groups", "expected an array of objects with instance_group_name and hosts")


def check_input_data_config(channels: dict) -> None:
    for name, channel in channels.items():
        if not CHANNEL_NAME.fullmatch(name) or name in (".", ".."):
            raise config_error(INPUT_DATA_CONFIG, f"channel {shown(name)}", "invalid name; SageMaker's are 1-64 letters, digits, '.', '-' or '_'")
        if not isinstance(channel, dict):
            raise config_error(INPUT_DATA_CONFIG, f"channel {shown(name)}", f"expected a JSON object, got {json_kind(channel)}")
    if not set(channels) - set(EXTRA_CHANNELS):
        raise config_error(INPUT_DATA_CONFIG, "no data channel; provide a 'train' channel (or 'training') with the images")


def main() -> int:
    """0 when the toolkit may start; else 1, with the reason in output/failure and in the log."""
    configure_logging()
    output_dir = base_dir() / "output"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)  # ours to write, says SageMaker's contract
        clear_failure(output_dir)  # an earlier local run's reason must not stand for this job's
    except OSError as exc:
        log.error("training failed: cannot write to the output folder (%s)", exc.strerror)
        return 1
    try:
        check_job_config(base_dir())
    except UserError as exc:
        reason = failure_reason(exc)
        write_failure(output_dir, reason)
        log.error("training failed: %s", reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
