"""MQTT transport for every evfl program: settings, topic names, publish, subscribe.

The coordinator ships model partitions to vehicles and stations as retained MQTT messages, so
a unit that connects hours later still finds the latest version on the broker. Programs talk
to MQTT only through this module; it knows nothing about Keras or the message schemas:
payloads are bytes.

Topic scheme (names on the wire are part of the contract)::

    evfl/<task>/<partition>/manifest     signed PartitionManifest (retained)
    evfl/<task>/<partition>/file         the file, inline, or the list of its chunks (retained)
    evfl/<task>/<partition>/file/<i>     chunk i of a file too large for one message (retained)

A broker retains one message per topic, so every chunk has a topic of its own. A newer file
with fewer chunks leaves the older file's higher-index chunks behind; readers tell them apart
by the file sha256 each chunk carries (see ``proto.partition_messages``).

Notes from the brokers the tests run on (``evfl.brokers.EmbeddedMqtt``):

- MQTT 3.1.1 throughout: amqtt speaks nothing newer, and a 3.1.1 PUBACK carries no reason
  code, so a broker that denies a publish by ACL still acknowledges it (Mosquitto does).
- A restarted broker (no persistence) has forgotten every session and subscription, so the
  subscriber always connects with a clean session and subscribes again on every CONNACK;
  the broker then re-sends the retained messages, so readers must take duplicates.
- A restarted broker without persistence has also lost every retained message: publishers
  whose messages must stay retained watch ``connections`` and publish them again.
- paho re-sends unacknowledged QoS 1 messages after a reconnect. A publish that timed out
  would then land later, after whatever the caller published next; so a failed publish drops
  the connection and its queue, and the next publish connects afresh.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import paho.mqtt.client as mqtt

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "InvalidMqttSettings",
    "InvalidTopicPart",
    "MqttMessage",
    "MqttPayloadTooLarge",
    "MqttPublishFailed",
    "MqttPublisher",
    "MqttSettings",
    "MqttSubscribeFailed",
    "MqttSubscriber",
    "MqttTransportError",
    "MqttUnavailable",
    "chunk_index",
    "chunk_topic",
    "file_topic",
    "manifest_topic",
    "partition_topics",
]

_LOG = logging.getLogger(__name__)
# paho's own chatter goes here, all of it at DEBUG: it logs every PUBLISH and PUBACK, and an
# ERROR for each ordinary disconnect; what deserves attention we log once in our callbacks.
_PAHO_LOG = logging.getLogger(__name__ + ".paho")


class _DemotedLog:
    """paho log sink: everything at DEBUG."""

    def log(self, _level: int, msg: str, *args: object) -> None:
        _PAHO_LOG.debug(msg, *args)


_PAHO_SINK = _DemotedLog()

KiB = 1024
# Conservative, so that amqtt and small brokers (often configured at 256 KiB) take every message.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * KiB
_MQTT_MAX_PAYLOAD = 268_435_455 - 1024  # the protocol's remaining-length limit, minus headers
_MIN_PAYLOAD = 1 * KiB  # below this a chunk would be mostly framing
_MASK = "***"
_POLL = 0.05  # seconds between checks while waiting for a CONNACK

TOPIC_ROOT = "evfl"
_TOPIC_PART = re.compile(r"[A-Za-z0-9._-]{1,100}")
_CLIENT_ID_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


# ----------------------------------------------------------------------------- errors


class MqttTransportError(RuntimeError):
    """Base of every MQTT failure a program's edge may catch, log once and count."""


class InvalidMqttSettings(ValueError):
    """A settings combination paho would reject or that would silently drop security."""


class InvalidTopicPart(ValueError):
    """A task id or partition name that cannot be one level of a topic name."""


class MqttUnavailable(MqttTransportError):
    """No CONNACK within the timeout, or the broker refused the connection."""


class MqttPublishFailed(MqttTransportError):
    """A message was not acknowledged; it may or may not have reached the broker."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"publish to {topic!r} failed: {reason}")
        self.topic = topic
        self.reason = reason


class MqttPayloadTooLarge(MqttPublishFailed):
    """A payload above ``MqttSettings.max_payload_bytes``: chunk it (nothing was sent)."""


class MqttSubscribeFailed(MqttTransportError):
    """The broker refused a subscription, or did not confirm it in time."""


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, repr=False)
class MqttSettings:
    """How to reach an MQTT broker; the one place that turns this into a paho client.

    ``max_payload_bytes`` bounds one message: larger files travel as chunks of at most this
    size. ``ca_file``, ``cert_file`` and ``key_file`` need ``tls=True`` (a CA file must never
    silently mean plaintext); with ``tls`` and no ``ca_file`` the system CAs are used.
    Reconnects back off from ``reconnect_min_delay`` to ``reconnect_max_delay`` seconds.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_id_prefix: str = "evfl"
    keepalive: int = 30
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    connect_timeout: float = 10.0
    publish_timeout: float = 10.0
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise InvalidMqttSettings("host is empty")
        if not 0 < self.port < 65536:
            raise InvalidMqttSettings(f"port {self.port} is not in 1..65535")
        if self.password is not None and self.username is None:
            raise InvalidMqttSettings("password without username (MQTT 3.1.1 needs both)")
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        given = [name for name, value in files.items() if value is not None]
        if given and not self.tls:
            raise InvalidMqttSettings(f"{', '.join(given)} set but tls is False")
        if self.key_file is not None and self.cert_file is None:
            raise InvalidMqttSettings("key_file without cert_file")
        if not _CLIENT_ID_PREFIX.fullmatch(self.client_id_prefix):
            raise InvalidMqttSettings(
                f"client_id_prefix {self.client_id_prefix!r} must be 1-64 letters, digits, "
                "'.', '_' or '-'"
            )
        if not _MIN_PAYLOAD <= self.max_payload_bytes <= _MQTT_MAX_PAYLOAD:
            raise InvalidMqttSettings(
                f"max_payload_bytes {self.max_payload_bytes} is not in "
                f"{_MIN_PAYLOAD}..{_MQTT_MAX_PAYLOAD}"
            )
        for name in ("keepalive", "connect_timeout", "publish_timeout", "reconnect_min_delay"):
            if not getattr(self, name) > 0:
                raise InvalidMqttSettings(f"{name} must be positive, got {getattr(self, name)}")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise InvalidMqttSettings("reconnect_max_delay is below reconnect_min_delay")

    def __repr__(self) -> str:
        parts = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            shown = _MASK if name == "password" and value is not None else value
            parts.append(f"{name}={shown!r}")
        return f"MqttSettings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def new_client(self, client_id: str) -> mqtt.Client:
        """A paho client with credentials, TLS and reconnect back-off set (not yet connected)."""
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(_PAHO_SINK)  # type: ignore[arg-type]
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(
                ca_certs=_path(self.ca_file),
                certfile=_path(self.cert_file),
                keyfile=_path(self.key_file),
            )
        # paho only does arithmetic with these, so fractions of a second work.
        client.reconnect_delay_set(self.reconnect_min_delay, self.reconnect_max_delay)  # type: ignore[arg-type]
        return client


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


# ----------------------------------------------------------------------------- topic names


def _part(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _TOPIC_PART.fullmatch(value):
        raise InvalidTopicPart(
            f"{kind} {value!r} must be 1-100 characters of letters, digits, '-', '_' or '.'"
        )
    return value


def _partition_root(task_id: str, partition: str) -> str:
    return f"{TOPIC_ROOT}/{_part('task id', task_id)}/{_part('partition', partition)}"


def manifest_topic(task_id: str, partition: str) -> str:
    """Where the signed manifest of a partition's latest version is retained."""
    return f"{_partition_root(task_id, partition)}/manifest"


def file_topic(task_id: str, partition: str) -> str:
    """Where a partition's latest file is retained: inline, or the list of its chunks."""
    return f"{_partition_root(task_id, partition)}/file"


def chunk_topic(task_id: str, partition: str, index: int) -> str:
    """Where chunk ``index`` of a partition's latest chunked file is retained."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"chunk index {index!r} must be an int >= 0")
    return f"{file_topic(task_id, partition)}/{index}"


def partition_topics(task_id: str, partition: str) -> tuple[str, str, str]:
    """The topic filters a reader of one partition subscribes to: manifest, file, chunks."""
    return (
        manifest_topic(task_id, partition),
        file_topic(task_id, partition),
        f"{file_topic(task_id, partition)}/+",
    )


def chunk_index(file_topic_name: str, topic: str) -> int | None:
    """The chunk index if ``topic`` is a chunk topic of ``file_topic_name``, else None."""
    prefix = file_topic_name + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    if not rest.isascii() or not rest.isdigit() or len(rest) > 9:
        return None
    return int(rest)


# ----------------------------------------------------------------------------- clients


def _new_client_id(settings: MqttSettings, role: str) -> str:
    return f"{settings.client_id_prefix}-{role}-{secrets.token_hex(4)}"


class _Connection:
    """One paho client with its network thread; paho reconnects by itself once connected."""

    role = "client"

    def __init__(self, settings: MqttSettings, client_id: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id or _new_client_id(settings, self.role)
        self._client: mqtt.Client | None = None
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._closing = False
        self.connections = 0  # successful CONNACKs so far: a rise means "connected afresh"

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"{type(self).__name__}({self.client_id!r} at {self.settings.address}, {state})"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for the CONNACK; MqttUnavailable if refused or not in time."""
        with self._lock:
            if self._client is not None:
                return
            wait = self.settings.connect_timeout if timeout is None else timeout
            self._closing = False
            self._refused = None
            client = self.settings.new_client(self.client_id)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            self._configure(client)
            client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
            client.loop_start()
            self._client = client
            deadline = time.monotonic() + wait
            while not self._connected.wait(_POLL):
                refused = self._refused
                if refused is not None or time.monotonic() >= deadline:
                    self._drop()
                    why = f"refused: {refused}" if refused else f"no CONNACK within {wait:g} s"
                    raise MqttUnavailable(f"MQTT broker at {self.settings.address}: {why}")

    def close(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        with self._lock:
            self._drop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _configure(self, client: mqtt.Client) -> None:
        """Subclasses add their callbacks here."""

    def _drop(self) -> None:
        """Tear the client down, discarding anything paho still had queued."""
        client, self._client = self._client, None
        self._closing = True
        self._connected.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            if self._refused is None:
                _LOG.error("%s: broker refused the connection: %s", self.client_id, reason)
            self._refused = str(reason)
            return
        self._refused = None
        self.connections += 1
        self._connected.set()
        _LOG.debug("%s: connected to %s", self.client_id, self.settings.address)
        self._on_connected(client)

    def _on_connected(self, client: mqtt.Client) -> None:
        """Subclasses act on every successful CONNACK here (in paho's thread)."""

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._on_disconnected()
        if was_connected and not self._closing:
            _LOG.warning(
                "%s: lost the broker at %s (%s); reconnecting",
                self.client_id,
                self.settings.address,
                reason,
            )

    def _on_disconnected(self) -> None:
        """Subclasses reset per-connection state here (in paho's thread)."""


class MqttPublisher(_Connection):
    """Publishes with QoS 1 and waits for every PUBACK; retained by default.

    Connects on first use if :meth:`connect` was not called. After a failure the connection
    is dropped (see the module notes), so a retry never races a late copy of the failed one.
    """

    role = "pub"

    def publish(
        self,
        topic: str,
        payload: bytes,
        retain: bool = True,
        qos: int = 1,
        timeout: float | None = None,
    ) -> None:
        """Publish one message; MqttPublishFailed unless the broker acknowledged it in time."""
        self.publish_many([(topic, payload)], retain=retain, qos=qos, timeout=timeout)

    def publish_many(
        self,
        messages: Iterable[tuple[str, bytes]],
        *,
        retain: bool = True,
        qos: int = 1,
        timeout: float | None = None,
    ) -> None:
        """Publish messages in order, pipelined; return once every one is acknowledged.

        ``timeout`` bounds the wait for each acknowledgement after the previous one (a
        progress timeout), so a large file on a slow link is not cut off halfway.
        """
        batch = [(topic, bytes(payload)) for topic, payload in messages]
        if qos not in (0, 1, 2):
            raise ValueError(f"qos {qos!r} is not 0, 1 or 2")
        for topic, payload in batch:
            if not topic or any(c in topic for c in "+#\x00"):
                raise ValueError(f"topic {topic!r} is empty or holds a wildcard or NUL")
            if len(payload) > self.settings.max_payload_bytes:
                raise MqttPayloadTooLarge(
                    topic,
                    f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                    f"{self.settings.max_payload_bytes}",
                )
        if not batch:
            return
        wait = self.settings.publish_timeout if timeout is None else timeout
        with self._lock:
            client = self._ready(batch[0][0], wait)
            infos = [client.publish(topic, payload, qos, retain) for topic, payload in batch]
            for (topic, _), info in zip(batch, infos, strict=True):
                reason = self._wait_acked(info, wait)
                if reason is not None:
                    self._drop()
                    raise MqttPublishFailed(topic, reason)

    def _ready(self, topic: str, wait: float) -> mqtt.Client:
        """The connected client, connecting or waiting out a reconnect within ``wait``."""
        try:
            self.connect(wait)
        except MqttUnavailable as exc:
            raise MqttPublishFailed(topic, str(exc)) from exc
        if not self._connected.wait(wait):
            self._drop()
            raise MqttPublishFailed(topic, f"not connected to {self.settings.address}")
        assert self._client is not None
        return self._client

    @staticmethod
    def _wait_acked(info: mqtt.MQTTMessageInfo, wait: float) -> str | None:
        """None once acknowledged, else why not."""
        try:
            info.wait_for_publish(wait)
        except (RuntimeError, ValueError) as exc:  # paho's way of saying "not queued / sent"
            return str(exc)
        if not info.is_published():
            return f"no acknowledgement within {wait:g} s"
        return None


@dataclass(frozen=True)
class MqttMessage:
    """One received message; ``retain`` is True for the broker's stored copy."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttSubscriber(_Connection):
    """Subscribes with QoS 1 and hands messages to a callback or, without one, a queue.

    Reconnects after the broker goes away and subscribes again on every connection, so a
    restarted broker (which forgot the subscription) serves it again. The callback runs in
    paho's network thread: keep it short. An exception it raises is logged and counted in
    ``callback_errors``, never allowed to kill that thread. When the queue is full a message
    is dropped, logged and counted in ``dropped``.
    """

    role = "sub"

    def __init__(
        self,
        settings: MqttSettings,
        topics: Sequence[str],
        on_message: Callable[[MqttMessage], None] | None = None,
        *,
        qos: int = 1,
        client_id: str | None = None,
        queue_size: int = 10_000,
    ) -> None:
        super().__init__(settings, client_id)
        if not topics or isinstance(topics, str):
            raise ValueError("topics must be a non-empty sequence of topic filters")
        self.topics = tuple(topics)
        self.qos = qos
        self._callback = on_message
        self._queue: queue.Queue[MqttMessage] = queue.Queue(queue_size)
        self._subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self._subscribe_error: str | None = None
        self.subscriptions = 0  # confirmed (re-)subscriptions, one per connection
        self.dropped = 0
        self.callback_errors = 0

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait until the broker confirmed the subscription."""
        wait = self.settings.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        super().connect(wait)
        while not self._subscribed.wait(_POLL):
            error = self._subscribe_error
            if error is not None or time.monotonic() >= deadline:
                self.close()
                raise MqttSubscribeFailed(
                    f"subscription to {list(self.topics)} at {self.settings.address}: "
                    f"{error or f'no SUBACK within {wait:g} s'}"
                )

    def wait_subscribed(self, timeout: float) -> bool:
        """True once connected and subscribed (again, after a reconnect) within ``timeout``."""
        return self._subscribed.wait(timeout)

    def get(self, timeout: float | None = None) -> MqttMessage | None:
        """The next queued message, or None after ``timeout`` seconds (only without callback)."""
        if self._callback is not None:
            raise RuntimeError("this subscriber delivers to its callback, not to a queue")
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _configure(self, client: mqtt.Client) -> None:
        self._subscribe_error = None
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    def _on_connected(self, client: mqtt.Client) -> None:
        _result, mid = client.subscribe([(topic, self.qos) for topic in self.topics])
        self._subscribe_mid = mid

    def _on_disconnected(self) -> None:
        self._subscribed.clear()

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: Any, _props: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [
            f"{topic}: {reason}"
            for topic, reason in zip(self.topics, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:
            self._subscribe_error = "refused " + "; ".join(refused)
            _LOG.error("%s: subscription %s", self.client_id, self._subscribe_error)
            return
        self.subscriptions += 1
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: Any) -> None:
        received = MqttMessage(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            qos=int(message.qos),
        )
        if self._callback is None:
            try:
                self._queue.put_nowait(received)
            except queue.Full:
                self.dropped += 1
                _LOG.warning(
                    "%s: queue full, dropped a message on %s", self.client_id, received.topic
                )
            return
        try:
            self._callback(received)
        except Exception:  # a bad handler must not kill paho's network thread
            self.callback_errors += 1
            _LOG.exception("%s: handler failed on a message on %s", self.client_id, received.topic)
