"""SageMaker Debugger users keep their DebuggerHookConfig: when SageMaker hands the job a
debughookconfig.json, smdebug's own hook is registered on the model and the loss as well, and
writes tensors where the config says (SageMaker uploads them to the job's S3 tensor path).

smdebug 1.0.34 still saves tensors with torch 2.13 (its profiler half is gone; see the README).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engine import Hook, LoopState

log = logging.getLogger(__name__)

CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"  # smdebug's own variable


def debug_hook_config_path() -> Path | None:
    """smdebug's variable if set, else the file SageMaker writes under /opt/ml (or SAGEMAKER_BASE_DIR)."""
    explicit = os.environ.get(CONFIG_ENV)
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    path = Path(explicit) if explicit else base / "input" / "config" / "debughookconfig.json"
    return path if path.is_file() else None


def smdebug_hook_from_environment() -> "SmdebugBridge | None":
    path = debug_hook_config_path()
    return SmdebugBridge(path) if path is not None else None


class SmdebugBridge(Hook):
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.hook = None

    def before_train(self, loop: LoopState) -> None:
        try:
            from smdebug.core.modes import ModeKeys
            from smdebug.pytorch import Hook as SmdebugHook
        except Exception as exc:  # the image ships smdebug; a slimmer build may not
            log.warning("debughookconfig.json found but smdebug is not importable (%s): Debugger tensors not saved", exc)
            return
        self.hook = SmdebugHook.create_from_json_file(str(self.config_path))
        modes = ModeKeys

        def set_mode(module, _inputs):  # smdebug counts TRAIN and EVAL steps apart; validation runs in eval mode
            self.hook.set_mode(modes.TRAIN if module.training else modes.EVAL)

        loop.model.register_forward_pre_hook(set_mode)  # before smdebug's own pre-hook, which reads the mode
        self.hook.register_module(loop.model)
        self.hook.register_loss(loop.criterion)
        log.info("smdebug hook registered from %s (tensors to %s)", self.config_path, self.hook.out_dir)

    def after_train(self, loop: LoopState) -> None:
        if self.hook is not None:
            self.hook.close()
            self.hook = None
