"""A server (or echo) started for a benchmark: its log file is closed when it stops, and when it never got ready."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dualhrq.bench.server_process import EchoProcess, ServerProcess
from dualhrq.errors import HRMError


def _open_here(path: Path) -> bool:
    """Whether this process holds a file descriptor on `path`."""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fds / fd) == str(path.resolve()) for fd in os.listdir(fds))


class _Exits(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "print('starting'); raise SystemExit(3)"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_the_log_is_closed_when_the_process_stops(tmp_path):
    log = tmp_path / "echo.log"
    with EchoProcess(pass_bytes=0, log_path=log) as echo:
        assert echo.pong["ready"] and _open_here(log)
    assert not _open_here(log)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_the_log_is_closed_when_the_server_exits_before_it_is_ready(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(HRMError, match="exited with code 3 before it was ready; its log ends:\n  starting") as raised:
        with _Exits("bundle", log_path=log, ready_timeout_s=30):
            pass
    assert not _open_here(log) and raised.traceback  # closed, not left to the collector the traceback holds off
