"""Starting the programs as real processes (the demo, the tests): via the `evfl` command, each
in its own process group, its output in a log file, its bound port read from a ready file.

Stopping kills the whole group, so no child outlives the launcher; on Linux a program started
from the main thread also dies with its parent (PR_SET_PDEATHSIG), even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from evfl.brokers import die_with_parent

READY_TIMEOUT_S = 240.0  # TensorFlow's import and a dataset load on a busy 2-core machine


class ProgramFailed(RuntimeError):
    """A program exited or did not become ready; the message carries its log tail."""


class Program:
    def __init__(self, workdir: Path, argv: list[str], name: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = READY_TIMEOUT_S, wait_ready: bool = True) -> Program:
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "EVFL_READY_FILE": str(ready), "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evfl.cli", *self.argv, "--log-format", "text"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> int:
        ready = self.workdir / f"{self.name}.ready"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not self.alive() or time.monotonic() > deadline:
                self.kill()
                raise ProgramFailed(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        self.port = int(ready.read_text())
        return self.port

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL if it has not stopped within ``timeout``."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


# --- config files for the programs ------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_toml(path: Path, data: dict[str, object]) -> Path:
    """A flat TOML file with one level of tables: enough for the programs' configs."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def fog_program(
    workdir: Path,
    station: str,
    kafka: str,
    tasks: list[str],
    cloud_port: int = 0,
    metrics_port: int = 0,
    training: dict[str, object] | None = None,
) -> Program:
    config: dict[str, object] = {
        "station_id": station,
        "state_dir": str(workdir / "state"),
        "listen": "127.0.0.1:0",
        "tasks": tasks,
        "kafka": {"bootstrap_servers": kafka, "enable_idempotence": False},
        "training": training or {"epochs": 2, "time_budget_s": 60},
    }
    if metrics_port:
        config["metrics_listen"] = f"127.0.0.1:{metrics_port}"
    if cloud_port:
        config["cloud"] = {"target": f"127.0.0.1:{cloud_port}"}
    path = write_toml(workdir / "fog.toml", config)
    return Program(workdir, ["fog", "serve", "--config", str(path)], "fog")


def coordinator_program(
    workdir: Path,
    task_files: list[Path],
    kafka: str,
    mqtt: tuple[str, int] | None,
    key_file: Path | None,
    metrics_port: int = 0,
) -> Program:
    config: dict[str, object] = {
        "registry_dir": str(workdir / "registry"),
        "cloud_listen": "127.0.0.1:0",
        "kafka": {"bootstrap_servers": kafka, "enable_idempotence": False},
    }
    if metrics_port:
        config["metrics_listen"] = f"127.0.0.1:{metrics_port}"
    if mqtt is not None:
        config["mqtt"] = {"host": mqtt[0], "port": mqtt[1]}
    if key_file is not None:
        config["signing"] = {"key_file": str(key_file), "key_id": key_file.name.split(".")[0]}
    path = write_toml(workdir / "coordinator.toml", config)
    argv = ["coordinator", "run", "--config", str(path)]
    for task in task_files:
        argv += ["--task", str(task)]
    return Program(workdir, argv, "coordinator")


def agent_program(
    workdir: Path,
    vehicle: str,
    tasks: list[str],
    station_target: str,
    mqtt: tuple[str, int],
    keyring_dir: Path,
) -> Program:
    config: dict[str, object] = {
        "vehicle_id": vehicle,
        "state_dir": str(workdir / "state"),
        "listen": f"unix:{workdir / 'agent.sock'}",
        "tasks": tasks,
        "station": {"target": station_target, "timeout_s": 1.0},
        "mqtt": {"host": mqtt[0], "port": mqtt[1]},
        "signing": {"keyring_dir": str(keyring_dir), "require_signed": True},
    }
    path = write_toml(workdir / "agent.toml", config)
    return Program(workdir, ["agent", "run", "--config", str(path)], "agent")
