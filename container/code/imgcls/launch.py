"""Multi-GPU / multi-node launch the way SageMaker's torch_distributed does: torchrun on every host."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

MASTER_PORT = 7777


def is_worker() -> bool:
    """True inside a process that torchrun started."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(module_args: list[str], *, hosts: list[str], current_host: str, nproc_per_node: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if len(hosts) <= 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={len(hosts)}", f"--node-rank={hosts.index(current_host)}",
                f"--master-addr={hosts[0]}", f"--master-port={MASTER_PORT}"]
    return cmd + ["-m", *module_args]


def run_torchrun(cmd: list[str], env: dict[str, str]) -> int:
    """Run torchrun; SIGTERM/SIGINT are passed on so every rank can checkpoint before SIGKILL."""
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)  # noqa: S603 - torchrun with our own module, built by torchrun_command

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def distributed_env(network_interface: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if network_interface:
        env.setdefault("NCCL_SOCKET_IFNAME", network_interface)
        env.setdefault("GLOO_SOCKET_IFNAME", network_interface)
    return env
