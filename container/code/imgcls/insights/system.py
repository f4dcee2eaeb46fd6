"""Background sampler of the host and its GPUs: one JSON line per second into system.jsonl (see FORMAT.md).

A daemon thread; each sample costs well under a millisecond of CPU (psutil reads /proc). NVML is
used only when a GPU is there and the library loads.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


class _Gpus:
    def __init__(self):
        self.handles, self.nvml = [], None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # no driver, no GPU: the sampler still records the host
            log.debug("NVML unavailable: %s", exc)

    def sample(self) -> list[dict]:
        rows = []
        for handle in self.handles:
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    power = self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                except self.nvml.NVMLError:
                    power = None
                rows.append({"util": float(util.gpu), "mem_used_bytes": int(mem.used), "mem_total_bytes": int(mem.total),
                             "power_w": power})
            except Exception as exc:
                log.debug("NVML sample failed: %s", exc)
        return rows

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception as exc:  # the sampler is done; a driver that cannot shut down must not fail the job
                log.debug("nvmlShutdown failed: %s", exc)


class SystemSampler:
    """Start with `start()`, end with `stop()` (joins the thread and closes the file)."""

    def __init__(self, path: Path, clock, interval: float = 1.0, gpus: bool = False, workers: bool = True):
        self.path, self.clock, self.interval, self.want_gpus = Path(path), clock, interval, gpus
        self.want_workers = workers  # listing child processes is most of a sample's cost: only when there are loader workers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self.process = psutil.Process()
        self.gpus = _Gpus() if self.want_gpus else None
        psutil.cpu_percent(percpu=True)  # the first call only sets the reference point
        psutil.cpu_times_percent()
        self.process.cpu_percent()
        self.disk0, self.net0 = psutil.disk_io_counters(), psutil.net_io_counters()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", buffering=1)
        self._thread = threading.Thread(target=self._run, name="insights-system-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.file.write(json.dumps(self.sample()) + "\n")
            except Exception as exc:  # never let the sampler take a job down
                log.warning("system sampler stopped: %s", exc)
                return

    def _workers_cpu(self) -> float:
        """CPU percent of the DataLoader worker processes (children of this one), summed."""
        total = 0.0
        children = {p.pid: p for p in self.process.children()}
        for pid in list(self._workers):
            if pid not in children:
                del self._workers[pid]
        for pid, child in children.items():
            try:
                if pid not in self._workers:
                    self._workers[pid] = child
                    child.cpu_percent()  # reference point
                    continue
                total += self._workers[pid].cpu_percent()
            except psutil.Error:
                self._workers.pop(pid, None)
        return total

    def sample(self) -> dict:
        times = psutil.cpu_times_percent()
        disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
        return {
            "t": round(self.clock(), 3),
            "cpu": psutil.cpu_percent(percpu=True),
            "mem_percent": psutil.virtual_memory().percent,
            "rss_bytes": self.process.memory_info().rss,
            "iowait": float(getattr(times, "iowait", 0.0)),
            "disk_read_bytes": _delta(disk, self.disk0, "read_bytes"),
            "disk_write_bytes": _delta(disk, self.disk0, "write_bytes"),
            "net_rx_bytes": _delta(net, self.net0, "bytes_recv"),
            "net_tx_bytes": _delta(net, self.net0, "bytes_sent"),
            "gpus": self.gpus.sample() if self.gpus is not None else [],
            "process_cpu": self.process.cpu_percent(),
            "workers_cpu": self._workers_cpu() if self.want_workers else 0.0,
        }

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            self.file.write(json.dumps(self.sample()) + "\n")  # a last sample, so short jobs have one
        except Exception as exc:
            log.debug("last system sample failed: %s", exc)
        self.file.close()
        if self.gpus is not None:
            self.gpus.close()


def _delta(now, start, field: str) -> int:
    if now is None or start is None:
        return 0
    return int(getattr(now, field) - getattr(start, field))
