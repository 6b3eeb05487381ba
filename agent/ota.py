"""Over-the-air edge partitions: verify, self-test, install and swap a new version — or refuse.

For each task the agent follows the edge partition's retained MQTT topics. A new version is
taken only when every check passes, in this order: the manifest is signed by a trusted key,
names this task's edge partition and is newer than what is served; the file reassembles to
the exact bytes the manifest pins (sha256, size); and the file, run on the manifest's parity
inputs, gives the outputs the coordinator recorded (the self-test: a file that loads but
computes something else never serves). Then it is written to disk and swapped in.

Anything else is refused: one log line naming task, version and reason, counted in
``refusals`` by reason. A refusal never stops the updater and never touches the version
being served. The retained manifest of the served version, sent again on every reconnect,
is not news and not a refusal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
from google.protobuf.message import DecodeError

from agent.edge_runtime import EDGE_NAME, EdgeRuntime, ModelLoadError
from agent.model_store import ModelStore, check_task_id
from models.tflite_runner import BadPartitionInput, TfliteRunner
from proto import partitions_pb2
from proto.limits import WireLimits
from proto.mqtt import MqttMessage, MqttSettings, MqttSubscriber, chunk_index, partition_topics
from proto.partition_messages import FileAssembler, StaleManifest, read_manifest, verify_file
from proto.signing import KeyRing
from proto.tensor_codec import decode_bundle
from proto.wire_errors import BadSignature, HashMismatch, PayloadTooLarge, WireError

__all__ = ["PARITY_TOLERANCE", "REASONS", "PartitionUpdater", "SelfTestFailed", "self_test"]

log = logging.getLogger("evfl.agent.ota")

PARITY_TOLERANCE = 1e-4  # float32 TFLite vs the coordinator's own run of the same file
REASONS = (
    "bad_signature",  # signed, but by an unknown key or the signature does not verify
    "unsigned",
    "stale",  # not newer than the version served or being fetched (a replay)
    "bad_hash",  # the file (or a chunk) does not match the hash that pins it
    "too_large",
    "malformed",  # does not parse, or the file does not load as an edge partition
    "self_test_failed",  # the file does not reproduce the manifest's parity outputs
    "wrong_partition",  # a valid manifest of another task or partition on this topic
    "store_failed",  # verified, but could not be written to disk (nothing swapped)
)


class SelfTestFailed(ValueError):
    """A partition file does not reproduce the parity outputs its manifest carries."""


class _Refused(Exception):
    """Internal: a message refused for ``reason`` (one of REASONS)."""

    def __init__(self, reason: str, version: int | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.version = version
        self.detail = detail


def self_test(
    runner: TfliteRunner,
    parity: Sequence[tuple[str, np.ndarray]],
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Run the file on the parity "input" rows; the largest deviation from the recorded outputs.

    SelfTestFailed if there are no samples, an output is not recorded, or any deviation
    exceeds ``tolerance`` (NaN included).
    """
    arrays = dict(parity)
    inputs = arrays.get("input")
    if inputs is None or len(inputs) == 0:
        raise SelfTestFailed("the manifest carries no parity input rows")
    missing = [name for name in runner.output_names if name not in arrays]
    if missing:
        raise SelfTestFailed(f"the manifest records no parity output {missing}")
    worst = 0.0
    for i in range(len(inputs)):
        try:
            out = runner.run(inputs[i : i + 1])
        except BadPartitionInput as exc:
            raise SelfTestFailed(f"parity input row {i}: {exc}") from None
        for name in runner.output_names:
            want = arrays[name][i : i + 1]
            got = out[name]
            if got.shape != want.shape:
                raise SelfTestFailed(
                    f"{name} row {i}: shape {got.shape}, the manifest records {want.shape}"
                )
            diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
            if not diff <= tolerance:
                raise SelfTestFailed(
                    f"{name} row {i} differs by {diff:.3g} from the manifest (> {tolerance:g})"
                )
            worst = max(worst, diff)
    return worst


@dataclass
class _Follow:
    """One task's edge partition topics and the file being assembled for it."""

    task_id: str
    manifest_topic: str
    file_topic: str
    chunk_filter: str
    assembler: FileAssembler

    @property
    def file_filters(self) -> tuple[str, str]:
        return self.file_topic, self.chunk_filter

    @property
    def pending_version(self) -> int | None:
        manifest = self.assembler.manifest
        return None if manifest is None else int(manifest.version)


def _peek(payload: bytes) -> partitions_pb2.PartitionManifest | None:
    """The manifest as sent, unverified: only to name it in a refusal."""
    manifest = partitions_pb2.PartitionManifest()
    try:
        manifest.ParseFromString(bytes(payload))
    except DecodeError:
        return None
    return manifest


def _reason(exc: WireError) -> str:
    if isinstance(exc, StaleManifest):
        return "stale"
    if isinstance(exc, HashMismatch):
        return "bad_hash"
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, BadSignature):
        return "bad_signature"
    return "malformed"


class PartitionUpdater:
    """Follows the edge partition of each task on MQTT and swaps verified versions in."""

    def __init__(
        self,
        settings: MqttSettings,
        tasks: Sequence[str],
        keyring: KeyRing | None,
        store: ModelStore,
        runtime: EdgeRuntime,
        *,
        require_signed: bool = True,
        limits: WireLimits | None = None,
        tolerance: float = PARITY_TOLERANCE,
    ) -> None:
        if require_signed and keyring is None:
            raise ValueError("require_signed needs a keyring")
        if not tasks:
            raise ValueError("tasks is empty: nothing to follow")
        self.settings = settings
        self.keyring = keyring
        self.store = store
        self.runtime = runtime
        self.require_signed = require_signed
        self.limits = limits or WireLimits()
        self.tolerance = tolerance
        self.refusals: Counter[str] = Counter()
        self.installs: Counter[str] = Counter()  # per task
        self.errors = 0  # unexpected exceptions (bugs), logged with a traceback
        self._follows: dict[str, _Follow] = {}
        for task in tasks:
            check_task_id(task)
            manifest, file, chunks = partition_topics(task, EDGE_NAME)
            self._follows[task] = _Follow(
                task, manifest, file, chunks, FileAssembler(file, self.limits)
            )
        self._by_manifest = {f.manifest_topic: f for f in self._follows.values()}
        self._by_file = {f.file_topic: f for f in self._follows.values()}
        self._handling = threading.Lock()
        self._changed = threading.Condition()
        self._subscriber: MqttSubscriber | None = None

    def __repr__(self) -> str:
        return (
            f"PartitionUpdater(tasks={sorted(self._follows)}, serving={self.runtime.tasks()}, "
            f"refusals={dict(self.refusals)})"
        )

    @property
    def topics(self) -> list[str]:
        """The topic filters followed: manifest, file and chunks of each task's edge partition."""
        return [t for f in self._follows.values() for t in (f.manifest_topic, *f.file_filters)]

    # ------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float | None = None) -> None:
        """Connect and subscribe; MqttUnavailable / MqttSubscribeFailed if the broker is not there.

        Serve what is installed first (:meth:`EdgeRuntime.restore`): this only adds updates.
        """
        if self._subscriber is not None:
            return
        subscriber = MqttSubscriber(self.settings, self.topics, on_message=self.handle)
        subscriber.connect(timeout)
        self._subscriber = subscriber
        log.info("following edge partitions of %s on %s", sorted(self._follows), subscriber)

    def stop(self) -> None:
        """Disconnect; safe to call twice. The served versions stay served."""
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wait_for_version(self, task_id: str, version: int, timeout: float) -> bool:
        """True once the task serves ``version`` or newer, within ``timeout`` seconds."""
        return self._wait(lambda: (self.runtime.active(task_id) or (0, ""))[0] >= version, timeout)

    def wait_for_refusals(self, reason: str, count: int, timeout: float) -> bool:
        """True once ``refusals[reason]`` reaches ``count``, within ``timeout`` seconds."""
        return self._wait(lambda: self.refusals[reason] >= count, timeout)

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    # ------------------------------------------------------------------------- messages

    def handle(self, message: MqttMessage) -> None:
        """One MQTT message in (the subscriber's callback); never raises."""
        follow = self._follow_of(message.topic)
        if follow is None:
            log.debug("ignoring a message on %s", message.topic[:200])
            return
        with self._handling:
            try:
                self._handle(follow, message)
            except _Refused as refused:
                self._refuse(follow.task_id, refused.version, refused.reason, refused.detail)
            except WireError as exc:
                self._refuse(follow.task_id, follow.pending_version, _reason(exc), str(exc))
            except Exception:  # a bug: keep the MQTT thread and the served model alive
                self.errors += 1
                log.exception("task %s: unexpected error on %s", follow.task_id, message.topic)

    def _follow_of(self, topic: str) -> _Follow | None:
        return (
            self._by_manifest.get(topic)
            or self._by_file.get(topic)
            or self._by_file.get(topic.rsplit("/", 1)[0])  # a chunk topic, "<file topic>/<i>"
        )

    def _handle(self, follow: _Follow, message: MqttMessage) -> None:
        topic = message.topic
        if topic == follow.manifest_topic:
            data = self._on_manifest(follow, message.payload)
        elif topic == follow.file_topic or chunk_index(follow.file_topic, topic) is not None:
            data = follow.assembler.offer(topic, message.payload)
        else:
            raise _Refused(
                "malformed", follow.pending_version, f"{topic[:200]!r} is no chunk topic"
            )
        if data is not None:
            self._install(follow, data)

    def _on_manifest(self, follow: _Follow, payload: bytes) -> bytes | None:
        """Take a manifest that passes every check; its file's bytes if already complete."""
        try:
            manifest = read_manifest(payload, self.keyring, self.require_signed, limits=self.limits)
        except WireError as exc:
            sent = _peek(payload)
            version = None if sent is None else int(sent.version)
            reason = _reason(exc)
            if isinstance(exc, BadSignature) and sent is not None and not sent.signature.ed25519:
                reason = "unsigned"
            raise _Refused(reason, version, str(exc)) from None
        version = int(manifest.version)
        if (manifest.task_id, manifest.partition) != (follow.task_id, EDGE_NAME):
            raise _Refused(
                "wrong_partition",
                version,
                f"manifest of {manifest.task_id}/{manifest.partition} on {follow.manifest_topic}",
            )
        key = (version, manifest.sha256)
        active = self.runtime.active(follow.task_id)
        if active == key:
            return None  # the retained copy of what is served, re-sent on (re)connect
        pending = follow.assembler.manifest
        if pending is not None and (int(pending.version), pending.sha256) == key:
            return follow.assembler.set_manifest(manifest)  # a duplicate: harmless
        serving = active[0] if active else 0
        newest = max(serving, follow.pending_version or 0)
        if version <= newest:
            raise _Refused("stale", version, f"not newer than v{newest} (serving v{serving})")
        log.info("task %s: edge v%d announced (%d bytes)", follow.task_id, version, manifest.size)
        return follow.assembler.set_manifest(manifest)

    def _install(self, follow: _Follow, data: bytes) -> None:
        manifest = follow.assembler.manifest
        assert manifest is not None  # the assembler completes only the manifest's file
        task, version = follow.task_id, int(manifest.version)
        verify_file(manifest, data, self.limits)
        try:
            model = self.runtime.build(manifest, data)
        except ModelLoadError as exc:
            raise _Refused("malformed", version, str(exc)) from None
        if not manifest.HasField("parity"):
            raise _Refused("self_test_failed", version, "the manifest carries no parity samples")
        parity = decode_bundle(manifest.parity, self.limits)
        try:
            worst = self_test(model.served.runner, parity, self.tolerance)
        except SelfTestFailed as exc:
            raise _Refused("self_test_failed", version, str(exc)) from None
        try:
            self.store.install(manifest, data)
        except OSError as exc:
            raise _Refused("store_failed", version, f"{self.store.root}: {exc}") from None
        self.runtime.activate(model)
        self.installs[task] += 1
        log.info(
            "task %s: edge v%d installed and serving (sha256 %s…, parity within %.2g)",
            task,
            version,
            manifest.sha256[:12],
            worst,
        )
        with self._changed:
            self._changed.notify_all()

    def _refuse(self, task: str, version: int | None, reason: str, detail: str) -> None:
        self.refusals[reason] += 1
        where = f"v{version}" if version is not None else "(no version)"
        log.warning("task %s %s: edge update refused: %s: %s", task, where, reason, detail)
        with self._changed:
            self._changed.notify_all()
