"""Kafka transport for every evfl program: settings, topic names, topic set-up, publish, subscribe.

Programs talk to Kafka only through this module, so the librdkafka knobs that matter (zstd,
idempotence, message size limits, manual commits) are decided once. It knows nothing about
Keras or the message schemas: values are bytes.

Notes from the embedded broker (Tansu 0.6, ``evfl.brokers.EmbeddedKafka``), which tests run on:

- A consumer group's first JoinGroup is answered only after about half of
  ``session.timeout.ms`` (+0.7 s); librdkafka's default of 45 s means a 23 s join. We use
  6 s (the smallest a stock Kafka broker accepts), so a join takes about 3.7 s on Tansu.
- Idempotent producers work (InitProducerId is supported; it adds 0.5-1 s to the first send),
  but not across a restart of the memory-only broker: it forgets the producer ids and an old
  producer retries UNKNOWN_PRODUCER_ID forever. ``EmbeddedKafka.settings()`` turns it off.
- Producing to a topic that does not exist creates it with the broker's defaults, so programs
  call :func:`ensure_topics` first.
- Committed offsets survive a consumer leaving and re-joining its group (until a restart).
- After a restart a subscribed consumer rejoins by itself (about 3 s) but keeps its old
  position: if the re-created topic already holds that many records, the ones before it are
  skipped (with fewer it starts again at 0). Readers that must see everything use
  :meth:`Subscriber.assign_from_beginning` after a restart, or call
  :meth:`Subscriber.rewind_truncated` now and then.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = [
    "DEFAULT_MESSAGE_MAX_BYTES",
    "CommitFailed",
    "ConsumeFailed",
    "Delivery",
    "InvalidKafkaSettings",
    "InvalidTaskId",
    "KafkaSettings",
    "KafkaTransportError",
    "KafkaUnavailable",
    "PublishFailed",
    "Publisher",
    "Record",
    "Subscriber",
    "TopicSetupFailed",
    "TopicSpec",
    "announce_topic",
    "chunks_topic",
    "ensure_topics",
    "task_topic_specs",
    "updates_topic",
    "validate_task_id",
    "wait_for_broker",
]

_LOG = logging.getLogger(__name__)
# librdkafka's own chatter (one line per failed reconnect, several a second while a broker is
# down) goes here at DEBUG; the errors worth a human's attention are logged once by our callbacks.
_RDKAFKA_LOG = logging.getLogger(__name__ + ".librdkafka")

MiB = 1024 * 1024
DEFAULT_MESSAGE_MAX_BYTES = 8 * MiB
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
_MASK = "***"
_SECRET_WORDS = ("password", "secret")


# ----------------------------------------------------------------------------- client plumbing


class _DemotedLog:
    """librdkafka log sink: everything at DEBUG (our error callbacks log what matters once)."""

    def log(self, _level: int, msg: str, *args: object) -> None:
        _RDKAFKA_LOG.debug(msg, *args)


_RDKAFKA_SINK = _DemotedLog()

# Error codes that mean "no broker answered", as opposed to "a broker said no".
_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._RESOLVE,
    }
)


def _quiet_error(err: KafkaError) -> None:
    _LOG.debug("Kafka client error: %s", err)


def _with_callbacks(
    config: dict[str, Any], on_error: Callable[[KafkaError], None] = _quiet_error
) -> dict[str, Any]:
    """A client config with librdkafka's log routed to Python logging and our error callback."""
    return {**config, "logger": _RDKAFKA_SINK, "error_cb": on_error}


def _describe(err: object) -> str:
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return str(err)


# ----------------------------------------------------------------------------- errors


class KafkaTransportError(RuntimeError):
    """Base of every Kafka failure a program's edge may catch, log once and count."""


class InvalidKafkaSettings(ValueError):
    """A settings combination librdkafka would reject or silently misuse."""


class InvalidTaskId(ValueError):
    """A task id that cannot be part of a topic name."""


class KafkaUnavailable(KafkaTransportError):
    """No broker of the cluster answered within the timeout."""


class TopicSetupFailed(KafkaTransportError):
    """The broker refused to create a topic (other than because it already exists)."""


class PublishFailed(KafkaTransportError):
    """A record was not acknowledged by the broker; ``reason`` is the broker's or client's."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"publish to {topic!r} failed: {reason}")
        self.topic = topic
        self.reason = reason


class ConsumeFailed(KafkaTransportError):
    """A consumer error that retrying will not fix (fatal, or authorization/authentication)."""


class CommitFailed(KafkaTransportError):
    """The group coordinator did not store a committed offset."""


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, repr=False)
class KafkaSettings:
    """How to reach a Kafka cluster; the one place that turns this into librdkafka configs.

    ``extra`` is passed to librdkafka verbatim and last, so it can override anything here.
    ``message_max_bytes`` bounds one record *before* compression (value, key, headers and about
    100 bytes of framing: librdkafka checks it when the record is queued); consumers are sized
    to fetch a record of that size. ``session_timeout_ms`` also sets how long a group join
    takes on Tansu (about half of it).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "evfl"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 6_000
    enable_idempotence: bool = True
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise InvalidKafkaSettings("bootstrap_servers is empty")
        if self.security_protocol not in get_args(SecurityProtocol):
            raise InvalidKafkaSettings(
                f"security_protocol {self.security_protocol!r} is not one of "
                f"{', '.join(get_args(SecurityProtocol))}"
            )
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise InvalidKafkaSettings(f"{self.security_protocol} needs a sasl_mechanism")
        needs_password = (self.sasl_mechanism or "").upper().startswith(("PLAIN", "SCRAM"))
        if needs_password and not (self.sasl_username and self.sasl_password):
            raise InvalidKafkaSettings(
                f"SASL mechanism {self.sasl_mechanism} needs sasl_username and sasl_password"
            )
        for name in ("message_max_bytes", "request_timeout_ms", "session_timeout_ms"):
            if getattr(self, name) <= 0:
                raise InvalidKafkaSettings(f"{name} must be positive, got {getattr(self, name)}")
        for pair in self.extra:
            if len(pair) != 2 or not isinstance(pair[0], str):
                raise InvalidKafkaSettings(f"extra entries must be (key, value) pairs: {pair!r}")

    def __repr__(self) -> str:
        def shown(name: str, value: object) -> object:
            secret = any(word in name.lower() for word in _SECRET_WORDS)
            return _MASK if secret and value is not None else value

        extra = tuple((key, shown(key, value)) for key, value in self.extra)
        parts = [
            f"{name}={shown(name, getattr(self, name))!r}"
            for name in self.__dataclass_fields__
            if name != "extra"
        ]
        return f"KafkaSettings({', '.join([*parts, f'extra={extra!r}'])})"

    __str__ = __repr__

    def _common_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": self.request_timeout_ms,
            "message.max.bytes": self.message_max_bytes,
            "receive.message.max.bytes": self._fetch_max_bytes() + MiB,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return config

    def _fetch_max_bytes(self) -> int:
        # Room for a full-size record plus its batch framing and headers.
        return self.message_max_bytes + MiB

    def _with_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        config.update(dict(self.extra))
        return config

    def producer_config(self) -> dict[str, Any]:
        """Durable, compressed, ordered sends: acks from all replicas, idempotent, zstd."""
        config = self._common_config()
        config.update(
            {
                "acks": "all",
                "enable.idempotence": self.enable_idempotence,
                "compression.type": "zstd",
                "request.timeout.ms": self.request_timeout_ms,
            }
        )
        return self._with_extra(config)

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        """Manual commits (a record counts as done only when its handler says so)."""
        if not group_id:
            raise InvalidKafkaSettings("group_id is empty")
        config = self._common_config()
        config.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # A subscribed topic created after the consumer joined (a station that starts
                # before the coordinator) is noticed within 10 s, not librdkafka's 5 min.
                "topic.metadata.refresh.interval.ms": 10_000,
                "session.timeout.ms": self.session_timeout_ms,
                "heartbeat.interval.ms": max(1, self.session_timeout_ms // 3),
                "max.partition.fetch.bytes": self._fetch_max_bytes(),
                "fetch.max.bytes": self._fetch_max_bytes(),
            }
        )
        return self._with_extra(config)

    def admin_config(self) -> dict[str, Any]:
        """For AdminClient and metadata requests."""
        return self._with_extra(self._common_config())


# ----------------------------------------------------------------------------- topic names

_TASK_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


def validate_task_id(task_id: str) -> str:
    """Return ``task_id`` if it can be part of a topic name, else raise :class:`InvalidTaskId`."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskId(
            f"task id {task_id!r} must be 1-100 characters of letters, digits, '-', '_' or '.'"
        )
    return task_id


def announce_topic(task_id: str) -> str:
    """Where the coordinator announces rounds and global models of a task."""
    return f"evfl.{validate_task_id(task_id)}.announce"


def updates_topic(task_id: str) -> str:
    """Where stations send their model updates for a task."""
    return f"evfl.{validate_task_id(task_id)}.updates"


def chunks_topic(task_id: str) -> str:
    """Where the chunks of payloads too large to travel inline go."""
    return f"evfl.{validate_task_id(task_id)}.chunks"


# ----------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class TopicSpec:
    """A topic with the configs we create it with (explicit, never the broker's defaults)."""

    name: str
    partitions: int = 1
    replication: int = 1
    # The broker limits the compressed batch, the client the raw record: incompressible data
    # grows a little under zstd, so the topic allows a margin above the client's limit.
    max_message_bytes: int = DEFAULT_MESSAGE_MAX_BYTES + MiB
    retention_ms: int = DEFAULT_RETENTION_MS

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication < 1:
            raise ValueError(f"topic {self.name!r}: partitions and replication must be >= 1")
        if self.max_message_bytes < 1:
            raise ValueError(f"topic {self.name!r}: max_message_bytes must be positive")
        if self.retention_ms < -1 or self.retention_ms == 0:
            raise ValueError(f"topic {self.name!r}: retention_ms must be positive or -1")

    def configs(self) -> dict[str, str]:
        return {
            "max.message.bytes": str(self.max_message_bytes),
            "retention.ms": str(self.retention_ms),
        }


def task_topic_specs(task_id: str, partitions: int = 1, replication: int = 1) -> list[TopicSpec]:
    """The three topics of one federated task (announce has one partition: one ordered log)."""
    return [
        TopicSpec(announce_topic(task_id), 1, replication),
        TopicSpec(updates_topic(task_id), partitions, replication),
        TopicSpec(chunks_topic(task_id), partitions, replication),
    ]


def wait_for_broker(settings: KafkaSettings, timeout: float = 30.0) -> None:
    """Block until the cluster answers a metadata request, else raise :class:`KafkaUnavailable`."""
    config = settings.admin_config()
    # Reconnect quickly so a broker that comes up late is noticed within a second.
    config.setdefault("reconnect.backoff.max.ms", 500)
    admin = AdminClient(_with_callbacks(config))
    deadline = time.monotonic() + timeout
    last: object = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaUnavailable(
                f"no Kafka broker at {settings.bootstrap_servers} answered within {timeout:g} s "
                f"({last})"
            )
        try:
            admin.list_topics(timeout=min(remaining, 1.0))
            return
        except KafkaException as exc:
            last = exc.args[0] if exc.args else exc


def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Tolerates "already exists" (an existing topic keeps its configs: this never alters them).
    Tansu 0.6 accepts any topic config key, even unknown ones, stores it and reports it back in
    DescribeConfigs, but enforces neither ``max.message.bytes`` (a 20 MB record is accepted
    into a topic limited to 1000 bytes) nor ``retention.ms``; it also accepts a replication
    factor above its broker count. So on Tansu the client-side ``message.max.bytes`` is the
    only size limit that holds.
    """
    specs = list(specs)
    if not specs:
        return []
    wait_for_broker(settings, timeout)
    admin = AdminClient(_with_callbacks(settings.admin_config()))
    new_topics = [
        NewTopic(spec.name, spec.partitions, spec.replication, config=spec.configs())
        for spec in specs
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    created: set[str] = set()
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if err.code() in _UNREACHABLE:
                raise KafkaUnavailable(f"creating topic {name!r}: {err.str()}") from exc
            raise TopicSetupFailed(f"creating topic {name!r}: {err.name()}: {err.str()}") from exc
        except TimeoutError as exc:
            raise KafkaUnavailable(f"creating topic {name!r}: no answer in {timeout:g} s") from exc
        created.add(name)
    names = [spec.name for spec in specs if spec.name in created]
    if names:
        _LOG.info("created Kafka topics %s", ", ".join(names))
    return names


# ----------------------------------------------------------------------------- publish

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored a published record."""

    topic: str
    partition: int
    offset: int


class Publisher:
    """A Producer that sends one record at a time and waits for the broker's acknowledgement.

    Synchronous on purpose: the programs send few, large records (model updates, chunks) and
    must know each one is stored before moving on.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer = Producer(_with_callbacks(settings.producer_config(), self._on_error))
        self._closed = False

    def _on_error(self, err: KafkaError) -> None:
        level = logging.ERROR if err.fatal() else logging.DEBUG
        _LOG.log(level, "Kafka producer error: %s", err)

    def publish(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> Delivery:
        """Send one record; return where it was stored or raise :class:`PublishFailed`.

        On a timeout the record may still be delivered later (librdkafka keeps retrying it
        until ``message.timeout.ms``); callers that retry should make records idempotent.
        """
        if self._closed:
            raise PublishFailed(topic, "publisher is closed")
        outcome: list[tuple[KafkaError | None, Message]] = []
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        wire_headers: list[tuple[str, str | bytes | None]] = list(pairs)
        try:
            self._producer.produce(
                topic,
                value=value,
                key=key,
                headers=wire_headers,
                on_delivery=lambda err, msg: outcome.append((err, msg)),
            )
        except KafkaException as exc:
            raise PublishFailed(topic, _describe(exc.args[0])) from exc
        except BufferError as exc:
            raise PublishFailed(topic, f"local send queue is full: {exc}") from exc
        deadline = time.monotonic() + timeout
        while not outcome:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishFailed(topic, f"no delivery report within {timeout:g} s")
            self._producer.poll(min(remaining, 0.1))
        err, msg = outcome[0]
        if err is not None:
            raise PublishFailed(topic, _describe(err))
        partition, offset = msg.partition(), msg.offset()
        if partition is None or offset is None:
            raise PublishFailed(topic, "delivery report without partition or offset")
        return Delivery(topic, partition, offset)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is still queued; log (not raise) how many records were not delivered."""
        if self._closed:
            return
        self._closed = True
        left = self._producer.flush(timeout)
        if left:
            _LOG.warning("Kafka publisher closed with %d undelivered record(s)", left)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- subscribe


@dataclass(frozen=True)
class Record:
    """One consumed record, detached from librdkafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None


def _as_bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def _record_from(msg: Message) -> Record:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ConsumeFailed("librdkafka returned a record without topic, partition or offset")
    raw_headers = msg.headers() or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    timestamp_type, timestamp = msg.timestamp()
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=msg.key(),
        value=msg.value() or b"",
        headers=tuple((name, _as_bytes(value)) for name, value in pairs),
        timestamp_ms=None if timestamp_type == TIMESTAMP_NOT_AVAILABLE else timestamp,
    )


# Not "fatal" in librdkafka's sense, but no retry will fix them: the caller must act.
_PERMANENT = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._INVALID_ARG,
    }
)


class Subscriber:
    """A Consumer with manual commits; ``poll`` returns a :class:`Record` or None.

    Transient errors (broker down, rebalance, unknown topic while it is being created) are
    logged once per kind until a record arrives again, and never raised; fatal and permanent
    ones raise :class:`ConsumeFailed`.
    """

    def __init__(
        self, settings: KafkaSettings, group_id: str, topics: Sequence[str] | None = None
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._seen_errors: set[int] = set()
        self._failure: KafkaError | None = None
        self._consumer = Consumer(
            _with_callbacks(settings.consumer_config(group_id), self._on_error)
        )
        self._closed = False
        if topics:
            self.subscribe(topics)

    def subscribe(self, topics: Sequence[str]) -> None:
        """Join the group for these topics; partitions arrive with the first polls."""
        self._consumer.subscribe(list(topics))

    def assign_from_beginning(self, topics: Sequence[str], timeout: float = 10.0) -> None:
        """Read every partition of ``topics`` from offset 0, without joining the group.

        For readers that must see the whole log, and after a broker restarted empty (group
        offsets gone). Raises :class:`KafkaUnavailable` if a topic does not exist.
        """
        partitions: list[TopicPartition] = []
        for topic in topics:
            try:
                metadata = self._consumer.list_topics(topic, timeout=timeout)
            except KafkaException as exc:
                raise KafkaUnavailable(f"metadata for {topic!r}: {_describe(exc.args[0])}") from exc
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                reason = info.error if info is not None else "not in metadata"
                raise KafkaUnavailable(f"topic {topic!r} is not available: {reason}")
            partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions]
        self._consumer.assign(partitions)

    def rewind_truncated(self, timeout: float = 5.0) -> list[str]:
        """Seek to the start of every assigned partition whose log now ends before this
        consumer's position, and name them (``topic[partition]``).

        A broker that restarted empty re-creates a topic from offset 0, but a consumer that
        rejoins keeps its old position and would wait for offsets that no longer come; calling
        this now and then reads the new log from its start. Raises :class:`KafkaUnavailable`
        when the broker does not answer.
        """
        try:
            positions = self._consumer.position(self._consumer.assignment())
            rewound = []
            for tp in positions:
                if tp.offset < 0:  # nothing fetched yet: the reset policy applies
                    continue
                low, high = self._consumer.get_watermark_offsets(tp, timeout, cached=False)
                if tp.offset > high:
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, low))
                    rewound.append(f"{tp.topic}[{tp.partition}]")
        except KafkaException as exc:
            raise KafkaUnavailable(f"consumer {self._group_id}: {_describe(exc.args[0])}") from exc
        return rewound

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in _PERMANENT:
            self._failure = err
        else:
            self._log_once(err)

    def _log_once(self, err: KafkaError) -> None:
        if err.code() in self._seen_errors:
            _LOG.debug("Kafka consumer %s: %s", self._group_id, err)
            return
        self._seen_errors.add(err.code())
        _LOG.warning("Kafka consumer %s: %s (retrying)", self._group_id, _describe(err))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise ConsumeFailed(f"consumer {self._group_id}: {_describe(self._failure)}")

    def poll(self, timeout: float = 1.0) -> Record | None:
        """The next record, or None if none arrived within ``timeout`` seconds."""
        self._raise_if_failed()
        msg = self._consumer.poll(timeout)
        self._raise_if_failed()
        if msg is None:
            return None
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            if err.fatal() or err.code() in _PERMANENT:
                raise ConsumeFailed(f"consumer {self._group_id}: {_describe(err)}")
            self._log_once(err)
            return None
        self._seen_errors.clear()
        return _record_from(msg)

    def commit(self, record: Record) -> None:
        """Synchronously mark ``record`` and everything before it in its partition as done."""
        offsets = [TopicPartition(record.topic, record.partition, record.offset + 1)]
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise CommitFailed(
                f"commit {record.topic}[{record.partition}]@{record.offset}: "
                f"{_describe(exc.args[0])}"
            ) from exc
        for tp in results or ():
            if tp.error is not None:
                raise CommitFailed(
                    f"commit {tp.topic}[{tp.partition}]@{record.offset}: {_describe(tp.error)}"
                )

    def close(self) -> None:
        """Leave the group (so partitions move at once) and free the client."""
        if self._closed:
            return
        self._closed = True
        self._consumer.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
