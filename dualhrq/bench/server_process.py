"""Start `dualhrq serve` as a subprocess for a benchmark or the demo, wait until it is ready, stop it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import msgpack
import zmq

from dualhrq.errors import HRMError


def free_tcp_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def ping(address: str, timeout_s: float = 1.0) -> dict | None:
    """One ping over a fresh DEALER socket; the pong as a dict, or None when nothing answered in time."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        rid = uuid.uuid4().hex[:12]
        sock.send_multipart([b"", msgpack.packb({"type": "ping", "id": rid})])
        if sock.poll(int(timeout_s * 1000)):
            return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
        return None
    finally:
        sock.close(0)


class ServerProcess:
    """`with ServerProcess(bundle, ...) as srv:` -> a ready server at srv.address, stopped with SIGTERM on exit."""

    def __init__(self, bundle: str | Path, config: str | Path | None = None, workers: int = 1,
                 log_path: str | Path | None = None, ready_timeout_s: float = 120.0) -> None:
        self.bundle, self.config, self.workers = str(bundle), config, workers
        self.address = free_tcp_address()
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.pong: dict | None = None
        self._log: IO[bytes] | None = None  # the server's stdout and stderr, open while it runs

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dualhrq", "serve", "--bundle", self.bundle, "--bind", self.address,
               "--workers", str(self.workers)]
        return cmd + ["--config", str(self.config)] if self.config else cmd

    def __enter__(self) -> ServerProcess:
        self._log = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(self.command(), stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     env=os.environ.copy())
        try:
            self.pong = self._ready_pong()
        except BaseException:  # `with` calls no __exit__ when __enter__ raises: stop it here
            self.stop()
            raise
        return self

    def _ready_pong(self) -> dict:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HRMError(f"server exited with code {self.proc.returncode} before it was ready{self._log_tail()}")
            pong = ping(self.address, 0.5)
            if pong and pong.get("ready"):
                return pong
        raise HRMError(f"server not ready within {self.ready_timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self, lines: int = 8) -> str:
        """The server's last log lines, for an error: the log may live in a directory removed right after."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return "; its log ends:\n  " + "\n  ".join(tail) if tail else ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``) and close its log; its exit status."""
        try:
            return self._terminate(timeout_s)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _terminate(self, timeout_s: float) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EchoProcess(ServerProcess):
    """The transport floor's echo (dualhrq.bench.transport_floor) in place of a server: ``pass_bytes`` read
    before each reply."""

    def __init__(self, pass_bytes: int, log_path: str | Path | None = None) -> None:
        super().__init__("", log_path=log_path, ready_timeout_s=30.0)
        self.pass_bytes = pass_bytes

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dualhrq.bench.transport_floor", "--bind", self.address, "--pass-bytes",
                str(self.pass_bytes)]
