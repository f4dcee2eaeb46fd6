"""`serve`: start multi-model-server with our handler, readiness /ping and clean shutdown.

Why not sagemaker_inference.model_server.start_model_server(): it writes /etc/sagemaker-mms.properties
(needs root), pip-installs model/code/requirements.txt at every start (needs the network), puts
worker sockets in the shared /tmp (/tmp/.mms.sock.9000, colliding between servers), lets /ping
answer 200 before the model is loaded, and leaves orphaned workers and sockets on SIGTERM. Here
everything a run writes lives in one private temporary folder that is removed on exit.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mms
import psutil

from ..errors import UserError
from . import readiness
from .model_files import resolve_model_dir

log = logging.getLogger("imgcls.serve")

HANDLER = "imgcls.serving.handler_service:handle"
BACKEND_SCRIPT = "imgcls-mms-backend"
# How long a batch may wait for company, only while requests overlap (BatchDelay.java): a lone
# request never waits; concurrent ones, answered together, come back a few ms apart.
DEFAULT_MAX_BATCH_DELAY_MS = 5  # [project.scripts] in pyproject.toml
MODEL_NAME = "model"
MMS_HOME = Path(mms.__file__).resolve().parent.parent
MMS_JARS = str(MMS_HOME / "mms" / "frontend" / "*")
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_SECONDS = 10


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def count_gpus() -> int:
    """Through NVML, so the parent never initialises CUDA."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU, no library: a CPU host
        return 0


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    port: int
    bind_host: str
    multi_model: bool
    workers: int
    threads_per_worker: int
    gpus: int
    batch_size: int
    max_batch_delay_ms: int
    timeout_seconds: int
    max_payload_mb: int
    startup_timeout_seconds: int
    idle_timeout_seconds: int

    @classmethod
    def from_env(cls, model_dir: str | None, port: int | None) -> "ServerConfig":
        env = os.environ
        multi_model = env.get("SAGEMAKER_MULTI_MODEL", "false").lower() == "true"
        base_dir = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
        cpus = len(os.sched_getaffinity(0))
        gpus = count_gpus()
        # One worker per GPU. On CPU one worker per 4 cores: a lone request then runs on all of a
        # worker's cores (low latency), and intra-op threads of one process scale well up to about 4.
        default_workers = gpus or max(1, cpus // 4)
        workers = max(1, _env_int("SAGEMAKER_MODEL_SERVER_WORKERS", default_workers))
        return cls(
            model_dir=Path(model_dir) if model_dir else base_dir / ("models" if multi_model else "model"),
            port=port if port is not None else _env_int("SAGEMAKER_BIND_TO_PORT", 8080),
            bind_host=env.get("IMGCLS_BIND_HOST", "0.0.0.0"),  # noqa: S104 - SageMaker reaches the container from outside
            multi_model=multi_model,
            workers=workers,
            threads_per_worker=_env_int("IMGCLS_TORCH_THREADS", max(1, cpus // workers)),
            gpus=gpus,
            batch_size=max(1, _env_int("IMGCLS_BATCH_SIZE", 8)),
            # 0: a batch is whatever waits when the worker turns free. Under load requests queue during
            # the forward pass and still form full batches; a lone request no longer waits (was 3 ms).
            max_batch_delay_ms=_env_int("IMGCLS_MAX_BATCH_DELAY_MS", DEFAULT_MAX_BATCH_DELAY_MS),
            timeout_seconds=_env_int("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
            max_payload_mb=_env_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6),
            startup_timeout_seconds=_env_int("SAGEMAKER_STARTUP_TIMEOUT", 600),
            idle_timeout_seconds=max(1, _env_int("IMGCLS_IDLE_TIMEOUT_SECONDS", 60)),
        )


MAX_MMS_PORT = 32766  # MMS 1.1 rejects ports >= 32767 ("Invalid port number")


def free_local_port() -> int:
    """A currently free 127.0.0.1 port that MMS accepts (the kernel's ephemeral range starts above it)."""
    for candidate in random.Random().sample(range(20000, MAX_MMS_PORT), 200):  # noqa: S311 - a port to try, not a secret
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free local port below 32767")


def mms_properties(config: ServerConfig, management_port: int) -> str:
    inference = f"http://{config.bind_host}:{config.port}"
    # Multi-model endpoints: SageMaker loads models through the management API on the serving port.
    management = inference if config.multi_model else f"http://127.0.0.1:{management_port}"
    properties = {
        "inference_address": inference,
        "management_address": management,
        "model_store": "/",
        "default_service_handler": HANDLER,
        "default_workers_per_model": config.workers,
        "number_of_gpu": config.gpus,
        # MMS (in seconds; its default_response_timeout is minutes) applies this to model loading as
        # well as to batches: a backstop here; the worker enforces SAGEMAKER_MODEL_SERVER_TIMEOUT itself.
        "default_response_timeout_seconds": max(config.timeout_seconds, config.startup_timeout_seconds) + 30,
        # Above the payload limit the handler answers 413 with a JSON reason; MMS's own 413 (far
        # above it) has an empty body. SageMaker itself caps real-time payloads at 6 MB.
        "max_request_size": (2 * config.max_payload_mb + 1) * 1024 * 1024,
        "max_response_size": config.max_payload_mb * 1024 * 1024,
        "decode_input_request": "false",
        "enable_envvars_config": "false",
        "async_logging": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in properties.items())


LOG4J_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <!-- One line per batch and per /ping would fill an endpoint's logs; faults and restarts still show.
       Filtered here, context-wide, because loggers are asynchronous (async_logging): a logger's own filter
       runs on the logging thread, so every dropped line still crossed the queue and woke that thread. -->
  <Filters>
    <RegexFilter regex="Backend response time.*" onMatch="DENY" onMismatch="NEUTRAL"/>
    <RegexFilter regex="Running .* endpoint took.*" onMatch="DENY" onMismatch="NEUTRAL"/>
  </Filters>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/></Console>
  </Appenders>
  <Loggers>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="ACCESS_LOG" level="warn"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="MMS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="info"/>
    <Root level="info"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""
# The logging thread sleeps until a line comes (log4j's default wait polls every 10 ms, 100 wake-ups a second).
LOG4J_WAIT_STRATEGY = "-DAsyncLogger.WaitStrategy=Block"
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def frontend_jvm_args(vm_args: str) -> list[str]:
    """The Java frontend's JVM options; SAGEMAKER_MODEL_SERVER_VMARGS comes after them, so its options win.

    Heap sized on purpose: 1/16 of the host's memory, between 256 MB and 1 GB. Java's default (1/4 of
    memory) let it grow to 561 MB under a soak although it needs far less; the memory belongs to the
    model workers. Huge pages for heap and compiled code where the kernel offers them: a request's
    path through the frontend runs after a forward pass has flushed the CPU caches, and on huge pages
    it costs fewer TLB misses (about 0.5 ms less per request here while the machine was busy, no
    difference on a quiet one). JIT compilation stops at the quick compiler (C1): the frontend does
    microseconds of work per request, and the optimising compiler kept recompiling it long after
    warm-up, taking a core for 10+ ms at a time from the forward pass (ResNet18 at 224 px,
    concurrency 1, busy machine: 47.0 ms against 54.6 ms per request; quiet: even).
    """
    args = [LOG4J_WAIT_STRATEGY, "-XX:TieredStopAtLevel=1"]
    if "-Xmx" not in vm_args:
        heap_mb = min(1024, max(256, psutil.virtual_memory().total // 2**20 // 16))
        args += [f"-Xmx{heap_mb}m", "-XX:+UseSerialGC"]
    try:
        huge_pages = "[never]" not in TRANSPARENT_HUGE_PAGES.read_text()
    except OSError:
        huge_pages = False
    if huge_pages:
        args.append("-XX:+UseTransparentHugePages")
    return args


# Idle OpenMP threads of a worker spin this many rounds (a fraction of a millisecond here) before they
# sleep. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) cost a futex wake per operator: a ResNet18 request
# 1.2-1.7x slower; spinning as long as libgomp's default (about 5 ms after every pass) took the cores
# from the frontend and the decoding that share them.
OPENMP_SPIN_COUNT = 10000


def worker_openmp_env(environ) -> dict[str, str]:
    """The workers' OpenMP wait policy, unless the user set one (GOMP_SPINCOUNT would override theirs)."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}


def _check_port_free(host: str, port: int) -> None:
    """Fail at once with one line, instead of MMS's Java stack trace seconds later."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))  # noqa: S104 - probes the address the server will bind
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on that port?)") from None


RUN_DIR_PREFIX = "imgcls-serve-"
UNIX_SOCKET_PATH_MAX = 107  # bytes: sun_path holds 108 with the final NUL
LONGEST_SOCKET_NAME = ".mms.sock.65535"


def _longest_socket_path(temp_dir: str) -> int:
    return len(os.fsencode(os.path.join(temp_dir, RUN_DIR_PREFIX + "x" * 8, LONGEST_SOCKET_NAME)))


def socket_friendly_temp_dir() -> str:
    """TMPDIR, unless the worker sockets' path in a run folder there would not fit a Unix socket address
    (MMS then waits silently until its start-up timeout): /tmp instead, said once."""
    wanted = tempfile.gettempdir()
    if _longest_socket_path(wanted) <= UNIX_SOCKET_PATH_MAX:
        return wanted
    fallback = "/tmp"  # noqa: S108 - only when TMPDIR cannot hold a socket; the run folder itself is private (mkdtemp)
    if _longest_socket_path(fallback) > UNIX_SOCKET_PATH_MAX or not os.access(fallback, os.W_OK | os.X_OK):
        raise UserError(f"TMPDIR {wanted} is too long for the worker sockets: set TMPDIR to a directory with a shorter path")
    log.warning("TMPDIR %s is too long for the worker sockets (%d bytes with the socket name; a Unix socket path holds %d): "
                "the server's run folder goes in %s", wanted, _longest_socket_path(wanted), UNIX_SOCKET_PATH_MAX, fallback)
    return fallback


class ModelServer:
    """One MMS frontend (Java) and its Python workers, all started and stopped by this object."""

    def __init__(self, config: ServerConfig):
        self.config = config
        # java.io.tmpdir of the frontend: the worker sockets (.mms.sock.<port>) land here, not in /tmp.
        self.run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=socket_friendly_temp_dir()))
        self.management_port = free_local_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.config
        if not 0 < config.port <= MAX_MMS_PORT:
            raise UserError(f"port {config.port}: multi-model-server 1.1.11 only listens on ports 1-{MAX_MMS_PORT}")
        _check_port_free(config.bind_host, config.port)
        model_dir = None
        if not config.multi_model:
            model_dir = resolve_model_dir(config.model_dir, self.run_dir / "model").resolve()
        elif not config.model_dir.is_dir():
            raise UserError(f"multi-model endpoint: model folder {config.model_dir} does not exist")
        plugin_dir = readiness.plugin_class_path(MMS_JARS, self.run_dir / "plugin")
        (self.run_dir / "mms.properties").write_text(mms_properties(config, self.management_port))
        (self.run_dir / "log4j2.xml").write_text(LOG4J_CONFIG)
        # MMS runs its Python backend with this executable: ours imports torch once for all workers
        # (imgcls.serving.backend); a bare interpreter where the package is not installed.
        backend = Path(sys.executable).parent / BACKEND_SCRIPT
        python = str(backend) if backend.is_file() else sys.executable
        java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
        if java is None:
            raise UserError("java not found: multi-model-server needs a Java runtime (set JAVA_HOME or put java on PATH)")
        # Ours first: it also holds ModelResponseDecoder and ServerInitializer, which must shadow MMS's own.
        class_path = ":".join([*([str(plugin_dir)] if plugin_dir else []), MMS_JARS])
        command = [java, f"-Dmodel_server_home={MMS_HOME}", f"-Djava.io.tmpdir={self.run_dir}",
                   f"-Dlog4j.configurationFile=file://{self.run_dir / 'log4j2.xml'}",
                   f"-Dimgcls.multiModel={str(config.multi_model).lower()}",
                   f"-Dimgcls.batchSize={config.batch_size}", f"-Dimgcls.maxBatchDelayMs={config.max_batch_delay_ms}",
                   f"-Dimgcls.idleTimeoutSeconds={config.idle_timeout_seconds}",
                   f"-Dimgcls.maxPayloadMb={config.max_payload_mb}",
                   *frontend_jvm_args(os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS", "")),
                   *os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS", "").split(),
                   "-cp", class_path, "com.amazonaws.ml.mms.ModelServer",
                   "--python", python, "-f", str(self.run_dir / "mms.properties"), "-s", "/",
                   *(["-m", f"{MODEL_NAME}={model_dir}"] if model_dir else [])]
        worker_env = {
            **worker_openmp_env(os.environ),
            **os.environ,
            "IMGCLS_TORCH_THREADS": str(config.threads_per_worker),
            "OMP_NUM_THREADS": str(config.threads_per_worker),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(config.max_payload_mb),
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(config.timeout_seconds),
            "IMGCLS_BATCH_SIZE": str(config.batch_size)}
        log.info("starting MMS on %s:%d with %d worker(s) x %d thread(s), %d GPU(s), batches of up to %d "
                 "within %d ms; run dir %s", config.bind_host, config.port, config.workers, config.threads_per_worker,
                 config.gpus, config.batch_size, config.max_batch_delay_ms, self.run_dir)
        self.process = subprocess.Popen(command, env=worker_env, cwd=self.run_dir)  # noqa: S603 - the MMS frontend, argv built here

    def _raise_if_exited(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"MMS exited during start-up with code {self.process.returncode}")

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_seconds
        host = "127.0.0.1" if self.config.bind_host in ("0.0.0.0", "") else self.config.bind_host  # noqa: S104 - a comparison, no bind
        url = f"http://{host}:{self.config.port}/ping"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"model not ready after SAGEMAKER_STARTUP_TIMEOUT={self.config.startup_timeout_seconds} s")

    def stop(self) -> None:
        """SIGTERM the frontend and every descendant, SIGKILL what is left after the grace period, remove the run dir."""
        me = psutil.Process()
        # As a child subreaper we also see workers whose parent died: they were reparented to us.
        processes = me.children(recursive=True)
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=STOP_GRACE_SECONDS)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):  # not Linux: orphans go to init as usual
        pass


class _Stop(Exception):
    pass


class _StopOnce:
    """Signal handler: the first SIGTERM/SIGINT interrupts serving; later ones are ignored, so a repeated
    signal can never land inside the clean-up (even before the `finally:` has ignored signals)."""

    def __init__(self):
        self.received: str | None = None

    def __call__(self, signo, frame):
        if self.received is None:
            self.received = signal.Signals(signo).name
            raise _Stop(self.received)


def run(model_dir: str | None, port: int | None) -> None:
    """Serve until SIGTERM/SIGINT, then clean up and return.

    When serving fails (no model, MMS died, not ready within SAGEMAKER_STARTUP_TIMEOUT) it cleans up
    and exits the process with a non-zero status, whoever the caller is.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    _become_subreaper()
    try:
        config = ServerConfig.from_env(model_dir, port)
    except ValueError as exc:
        log.error("serve failed: a setting is not a number: %s", exc)
        raise SystemExit(1) from None
    stop_once = _StopOnce()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_once)
    server = None
    exit_code = 0
    try:
        server = ModelServer(config)
        started = time.monotonic()
        server.start()
        server.wait_until_ready()
        log.info("ready after %.1f s: http://%s:%d/ping", time.monotonic() - started, config.bind_host, config.port)
        exit_code = server.process.wait() or 1
        log.error("MMS exited with code %d", server.process.returncode)
    except _Stop as stop:
        log.info("%s received: stopping", stop)
    except (UserError, TimeoutError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("serve failed: %s", exc)
        exit_code = 1
    finally:
        stop_once.received = stop_once.received or "clean-up"  # from here on no signal interrupts
        if server is not None:
            server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Ignored at the C level: Python's shutdown would reset a Python handler to the default (death).
            signal.signal(sig, signal.SIG_IGN)
    if exit_code:
        raise SystemExit(exit_code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="serve", description="Serve the trained model on SageMaker's /ping and /invocations.")
    parser.add_argument("--model-dir", help="model folder or model.tar.gz (default: $SAGEMAKER_BASE_DIR/model, /opt/ml/model)")
    parser.add_argument("--port", type=int, help="default: $SAGEMAKER_BIND_TO_PORT or 8080")
    args = parser.parse_args(argv)
    run(args.model_dir, args.port)


if __name__ == "__main__":
    main()
