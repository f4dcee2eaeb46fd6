"""A warm trial starter: imports torch, torchvision and imgcls's training once, then forks one child per trial.

Each child is a real `imgcls train` run (imgcls.cli.main with the trial's arguments) in its own
process, writing stdout and stderr to the trial's log file; it skips only the import (~10 s on a
small CPU) and the interpreter teardown (~2 s, os._exit after flushing). Fork safety: nothing here
starts a thread before forking (checked), and each child sets its own torch thread count.

Protocol (JSON lines): the controller writes {"id", "argv", "log", "env", "threads"} to stdin;
the zygote answers {"event": "ready", "import_s"} once, then {"event": "started", "id", "pid"}
and {"event": "exited", "id", "pid", "code"}. When stdin closes (the controller ended or was
killed), the zygote kills its children and exits; each process also dies with its parent
(PR_SET_PDEATHSIG), so no trial outlives a killed study.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: get `sig` when the parent process ends (no orphaned trials after a SIGKILL of the study)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: trials may outlive a killed controller
        pass


def _preimport() -> None:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import imgcls.cli  # noqa: F401
    import imgcls.train  # noqa: F401
    import imgcls.failure  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401  (train() writes TensorBoard events)


def _child(request: dict) -> None:
    """In the forked child: become the trial and never return."""
    code = 1
    try:
        die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout.reconfigure(line_buffering=True)
        os.environ.update(request.get("env", {}))
        import torch
        torch.set_num_threads(int(request["threads"]))
        from imgcls.cli import main
        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash is a failed trial, reported by its exit code
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _say(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def serve() -> int:
    die_with_parent()
    started = time.perf_counter()
    _preimport()
    if threading.active_count() != 1:
        print(f"zygote: {threading.active_count()} threads after imports; forking would be unsafe", file=sys.stderr)
        return 1
    _say({"event": "ready", "import_s": round(time.perf_counter() - started, 2)})
    children: dict[int, int] = {}  # pid -> request id
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    buffer = b""
    open_input = True
    while open_input or children:
        if open_input and selector.select(timeout=0.05):
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                open_input = False
                for pid in children:  # the controller is gone: so are its trials
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    _child(request)
                children[pid] = request["id"]
                _say({"event": "started", "id": request["id"], "pid": pid})
        elif not open_input:
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None and open_input:
                _say({"event": "exited", "id": rid, "pid": pid, "code": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":
    sys.exit(serve())
