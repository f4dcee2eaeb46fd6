"""The worker's own request timeout: SAGEMAKER_MODEL_SERVER_TIMEOUT in seconds, enforced inside the worker.

MMS 1.1.11 applies one timeout to a worker's model load and to its batches, and when it expires it
only drops the connection: the worker process went on computing beside its replacement. Here a
thread of the worker answers every request of an overdue batch with a 504 in our JSON shape, then
ends the process; the frontend starts a fresh worker. It also ends the worker as soon as the
frontend closes the connection (frontend timeout, scale-down), so no worker outlives its job.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
import sys
import threading
import time

from .errors import error_body

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
EXIT_CODE = 3


def find_frontend_socket() -> socket.socket | None:
    """The connection MMS's worker loop reads requests from (its local `cl_socket`)."""
    frame = sys._getframe()
    while frame is not None:
        candidate = frame.f_locals.get("cl_socket")
        if isinstance(candidate, socket.socket):
            return candidate
        frame = frame.f_back
    return None


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("!i", len(data)) + data


def timeout_reply(request_ids: dict, seconds: float) -> bytes:
    """A whole MMS worker reply (otf protocol) answering each request with 504 and our JSON error."""
    body = error_body(504, f"the request took longer than SAGEMAKER_MODEL_SERVER_TIMEOUT={seconds:g} s").encode()
    reply = struct.pack("!i", 200) + _text("timeout")
    for index in request_ids:
        reply += _text(request_ids[index]) + _text("application/json")
        reply += struct.pack("!i", 504) + _text("Gateway Timeout") + struct.pack("!i", 0)
        reply += struct.pack("!i", len(body)) + body
    return reply + struct.pack("!i", -1)


class Watchdog:
    def __init__(self, timeout_seconds: float, connection: socket.socket | None):
        self.timeout_seconds = timeout_seconds
        self.connection = connection
        self.lock = threading.Lock()
        self.batch_started: float | None = None
        self.request_ids: dict = {}
        threading.Thread(target=self._watch, name="imgcls-watchdog", daemon=True).start()

    def begin(self, request_ids: dict) -> None:
        with self.lock:
            self.batch_started, self.request_ids = time.monotonic(), dict(request_ids or {})

    def end(self) -> None:
        """Called when the batch's answers are ready; after a timeout it blocks until the process ends."""
        with self.lock:
            self.batch_started = None

    def _peer_closed(self) -> bool:
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLHUP | POLLRDHUP)
        return any(events & (select.POLLHUP | POLLRDHUP | select.POLLERR | select.POLLNVAL)
                   for _, events in poller.poll(0))

    def _watch(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            if self.connection is not None and self._peer_closed():
                log.warning("frontend closed the connection: worker %d exits", os.getpid())
                os._exit(EXIT_CODE)
            with self.lock:
                overdue = self.batch_started is not None and time.monotonic() - self.batch_started > self.timeout_seconds
                if not overdue:
                    continue
                log.error("batch of %d request(s) over %g s: answering 504 and ending worker %d",
                          len(self.request_ids), self.timeout_seconds, os.getpid())
                if self.connection is not None:
                    try:
                        self.connection.sendall(timeout_reply(self.request_ids, self.timeout_seconds))
                    except OSError:
                        pass
                sys.stdout.flush()
                os._exit(EXIT_CODE)  # holding the lock: the main thread can never send a late reply
