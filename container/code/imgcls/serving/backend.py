"""The model server's Python backend, run by MMS in place of a bare `python`.

MMS starts `python model_service_worker.py ...` once per model: that process only listens on a
Unix socket and forks one child per worker connection, and the child imports the handler and
loads the model. Importing torch, torchvision and the handler here first, in the listener, means
a worker that replaces a crashed or killed one forks with them already imported (seconds less
without service). Nothing here starts a thread or touches CUDA, so forking stays safe.
"""
from __future__ import annotations

import runpy
import sys


def main() -> None:
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import imgcls.serving.handler_service  # noqa: F401
    script, *args = sys.argv[1:]  # MMS's own model_service_worker.py and its arguments
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
