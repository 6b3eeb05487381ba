"""Real program processes for the integration tests: started via the `evfl` CLI, told to write
their bound port to a ready file, killed as a process group (no child left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evfl.brokers import free_port
from proto import station_pb2, station_pb2_grpc
from proto.grpc_channel import open_channel

READY_TIMEOUT_S = 240  # TensorFlow's import (and a dataset load) on a busy 2-core machine


class Program:
    def __init__(self, workdir: Path, argv: list[str], name: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Program:
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes to it)
        env = {**os.environ, "EVFL_READY_FILE": str(ready)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evfl.cli", *self.argv, "--log-format", "text"],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.port = int(ready.read_text())
        return self

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


def fog_program(
    workdir: Path,
    station: str,
    bootstrap: str,
    tasks: list[str],
    cloud_port: int = 0,
    epochs: int = 2,
) -> Program:
    metrics_port = free_port()
    cloud = f'[cloud]\ntarget = "127.0.0.1:{cloud_port}"\n' if cloud_port else ""
    config = workdir / "fog.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'station_id = "{station}"\n'
        f'state_dir = "{workdir / "state"}"\n'
        'listen = "127.0.0.1:0"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
        f"tasks = {tasks!r}\n".replace("'", '"')
        + "[kafka]\n"
        f'bootstrap_servers = "{bootstrap}"\n'
        "enable_idempotence = false\n"
        "[training]\n"
        f"epochs = {epochs}\n"
        "time_budget_s = 60\n" + cloud
    )
    program = Program(workdir, ["fog", "serve", "--config", str(config)], "fog")
    program.metrics_port = metrics_port  # type: ignore[attr-defined]
    return program


def station_stub(port: int) -> station_pb2_grpc.StationServiceStub:
    return station_pb2_grpc.StationServiceStub(open_channel(f"127.0.0.1:{port}"))


def station_status(port: int) -> station_pb2.StationStatus:
    return station_stub(port).Status(station_pb2.StatusRequest(), timeout=10)
