"""The model server's Python, run by MMS in place of a bare `python` for every script it starts.

MMS starts `python model_service_worker.py ...` once per model: that process only listens on a
Unix socket and forks one child per worker connection, and the child imports the handler and
loads the model. Importing torch, torchvision and the handler here first, in the listener, means
a worker that replaces a crashed or killed one forks with them already imported (seconds less
without service). Nothing here starts a thread or touches CUDA, so forking stays safe. Other
scripts (MMS's metric collector, every minute) run as they are.
"""
from __future__ import annotations

import os
import runpy
import sys

WORKER_LISTENER = "model_service_worker.py"


def main() -> None:
    script, *args = sys.argv[1:]
    if os.path.basename(script) == WORKER_LISTENER:
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        import imgcls.serving.handler_service  # noqa: F401
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` has it (not this file's bin/)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
