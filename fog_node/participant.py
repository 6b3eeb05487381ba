"""What a station does with a model announcement, free of Kafka: serve it, train on it, answer.

For version N of a task it (1) installs N's fog partition for inference, (2) checks its stored
sessions against N's data constraints and logs the precise reason, (3) trains the whole model
from N's weights on the sessions stored since its watermark plus a replay sample of older
ones, within the round's deadline and its time budget, and (4) returns a ClientUpdate, which
is kept in the store as pending until the loop confirms its delivery, and after that until the
next one is delivered: a re-announced round gets the same update again ("resend"). The
watermark, the trained version and the announcement itself are persisted, so a restart neither
retrains nor loses the model it was serving. Every outcome is logged once and counted.

A top-k update sends a small share of the delta; the rest (the residual) is stored with the
update and added to the task's next delta (error feedback), so it is delayed, not dropped.
Any other encoding clears the residual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fog_node.session_store import CLEAR_RESIDUAL
from models.constraints import check_compatibility, window_mask
from models.exit_policy import ExitPolicy
from models.incremental import (
    IncompatibleModel,
    IncrementalSettings,
    NotEnoughData,
    TrainingDiverged,
    train_round,
)
from models.model_config import PARTITIONS, ModelConfig, ModelConfigError
from models.partitioned import ShapeMismatch
from models.preprocessing import Preprocessing, PreprocessingError
from models.served_partition import ServedPartition, ServedVersions
from models.tflite_runner import TfliteRunner
from proto import federation_pb2
from proto.constraints_codec import constraints_from_proto
from proto.federation_codec import (
    SERVE_ONLY,
    ExitScore,
    ReadAnnouncement,
    build_update,
    read_announcement,
)
from proto.limits import WireLimits
from proto.signing import KeyRing, Signer
from proto.update_encoding import (
    FLOAT32,
    DeltaKind,
    EncodedDelta,
    EncodedUpdate,
    UpdateEncoding,
    UpdateEncodingError,
    encode_delta,
)
from proto.wire_errors import WireError

if TYPE_CHECKING:
    from fog_node.metrics import FogMetrics
    from fog_node.session_store import ClearResidual, SessionStore
    from proto import tensors_pb2

log = logging.getLogger("evfl.fog.participant")

FOG = 1
DEADLINE_MARGIN_S = 2.0  # leave time to encode and publish the update before the deadline


@dataclass(frozen=True)
class Outcome:
    kind: str  # the metric label: trained, stale, incompatible, malformed, ...
    detail: str
    task_id: str = ""
    version: int = -1
    update: tuple[str, bytes] | None = None  # (update_id, payload) to publish


@dataclass(frozen=True)
class _Version:
    read: ReadAnnouncement
    config: ModelConfig
    preprocessing: Preprocessing


class Participant:
    def __init__(
        self,
        station_id: str,
        tasks: list[str],
        store: SessionStore,
        served: ServedVersions,
        metrics: FogMetrics,
        training: IncrementalSettings,
        keyring: KeyRing | None = None,
        require_signed: bool = False,
        signer: Signer | None = None,
        limits: WireLimits | None = None,
        serve_workers: int = 4,
    ) -> None:
        self.station_id = station_id
        self.tasks = set(tasks)
        self.store = store
        self.served = served
        self.metrics = metrics
        self.training = training
        self.keyring = keyring
        self.require_signed = require_signed
        self.signer = signer
        self.limits = limits or WireLimits()
        self.serve_workers = serve_workers

    # --- entry points -------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Re-install the fog partition of every task's last accepted announcement."""
        restored = []
        for task_id in self.store.task_ids():
            state = self.store.task_state(task_id)
            if state.last_announcement is None or task_id not in self.tasks:
                continue
            try:
                version = self._decode(read_announcement(state.last_announcement, self.keyring))
                self._serve(version)
            except (WireError, ModelConfigError, PreprocessingError, ShapeMismatch) as exc:
                log.error("cannot restore %s from the store: %s", task_id, exc)
                continue
            restored.append(f"{task_id} v{state.serving_version}")
        return restored

    def on_announcement(
        self, data: bytes, chunks: list[tensors_pb2.Chunk] | None = None
    ) -> Outcome:
        outcome = self._handle(data, chunks or [])
        self.metrics.announcements.labels(outcome.kind).inc()
        where = f"{outcome.task_id} v{outcome.version}" if outcome.task_id else "announcement"
        quiet = ("trained", "stale", "resend", "ended", "serve_only")
        level = logging.INFO if outcome.kind in quiet else logging.WARNING
        log.log(level, "%s: %s: %s", where, outcome.kind, outcome.detail)
        return outcome

    # --- steps --------------------------------------------------------------------------------

    def _handle(self, data: bytes, chunks: list[tensors_pb2.Chunk]) -> Outcome:
        try:
            read = read_announcement(data, self.keyring, self.require_signed, chunks, self.limits)
        except WireError as exc:
            return Outcome(type(exc).__name__, str(exc))
        msg = read.message
        task_id, version = msg.task_id, msg.version
        if task_id not in self.tasks:
            return Outcome(
                "unknown_task",
                f"not one of this station's tasks {sorted(self.tasks)}",
                task_id,
                version,
            )
        state = self.store.task_state(task_id)
        if read.ends_task:
            self.store.update_task_state(task_id, last_compatibility="task ended")
            return Outcome("ended", "task ended; still serving the last version", task_id, version)
        if version <= state.trained_version and version <= state.serving_version:
            sent = None
            if version == state.trained_version and msg.round != SERVE_ONLY:
                sent = self._sent_update(task_id, version)
            if sent is not None:
                # The round we answered is announced again: the coordinator may never have
                # got our update (a broker that restarted empty lost it). The loop decides
                # when to re-send; the coordinator drops copies it has already recorded.
                return Outcome("resend", f"update {sent[0]} already sent", task_id, version, sent)
            return Outcome(
                "stale", f"already handled (trained v{state.trained_version})", task_id, version
            )
        try:
            decoded = self._decode(read)
            if version > state.serving_version:
                self._serve(decoded)
                self.store.update_task_state(
                    task_id, serving_version=version, last_announcement=data
                )
        except (ModelConfigError, PreprocessingError, WireError) as exc:
            return Outcome("bad_model", str(exc), task_id, version)
        except ShapeMismatch as exc:
            return Outcome("shape_mismatch", str(exc), task_id, version)
        if msg.round == SERVE_ONLY:
            return Outcome("serve_only", "serving; no round is open", task_id, version)
        if version <= state.trained_version:
            return Outcome(
                "stale", f"already trained on v{state.trained_version}", task_id, version
            )
        return self._train(decoded, state.watermark)

    def _update_id(self, task_id: str, version: int) -> str:
        return f"{self.station_id}:{task_id}:v{version}"

    def _sent_update(self, task_id: str, version: int) -> tuple[str, bytes] | None:
        update_id = self._update_id(task_id, version)
        payload = self.store.sent_update(update_id)
        return None if payload is None else (update_id, payload)

    def _decode(self, read: ReadAnnouncement) -> _Version:
        config = ModelConfig.from_dict(read.model_config)
        preprocessing = Preprocessing.from_dict(read.preprocessing)
        if tuple(config.input_shape) != preprocessing.input_shape:
            raise PreprocessingError(
                f"model input {tuple(config.input_shape)} differs from the preprocessing's "
                f"{preprocessing.input_shape}"
            )
        return _Version(read, config, preprocessing)

    def _serve(self, v: _Version) -> None:
        from models.export import serving_partitions

        msg = v.read.message
        fog = serving_partitions(v.config, v.read.weights, (PARTITIONS[FOG],))[PARTITIONS[FOG]]
        self.served.install(
            ServedPartition(
                task_id=msg.task_id,
                version=msg.version,
                index=FOG,
                runner=TfliteRunner(fog, workers=self.serve_workers),
                normalization=v.preprocessing.normalization,
                # No thresholds: the fog exit always answers (nothing calibrated yet).
                policy=ExitPolicy(tuple(msg.exit_policy.thresholds)),
            )
        )

    def _train(self, v: _Version, watermark: int) -> Outcome:
        msg = v.read.message
        task_id, version = msg.task_id, msg.version
        budget = self.training.time_budget_s
        if msg.round_deadline_unix_ms:
            left = msg.round_deadline_unix_ms / 1000 - time.time() - DEADLINE_MARGIN_S
            if left <= 0:
                return Outcome(
                    "deadline_passed", f"round deadline passed {-left:.0f} s ago", task_id, version
                )
            budget = min(budget, left)
        try:
            constraints = constraints_from_proto(msg.constraints)
        except WireError as exc:
            return Outcome("bad_model", str(exc), task_id, version)
        frame = self.store.frame()
        verdict = check_compatibility(
            constraints, v.preprocessing, None, frame, watermark=watermark
        )
        self.store.update_task_state(task_id, last_compatibility=verdict.reason)
        if not verdict.ok:
            return Outcome("incompatible", verdict.reason, task_id, version)
        settings = replace(self.training, time_budget_s=budget, seed=self.training.seed + version)
        try:
            result = train_round(
                v.config,
                v.preprocessing,
                v.read.weights,
                frame,
                watermark,
                settings,
                eligible=window_mask(constraints, frame),
            )
        except NotEnoughData as exc:
            return Outcome("incompatible", str(exc), task_id, version)
        except (IncompatibleModel, ShapeMismatch) as exc:
            return Outcome("shape_mismatch", str(exc), task_id, version)
        except TrainingDiverged as exc:
            return Outcome("diverged", str(exc), task_id, version)
        self.metrics.training_seconds.observe(result.train_seconds)
        self.metrics.training_rows.inc(result.sample_count)
        update_id = self._update_id(task_id, version)
        scores = [
            ExitScore(name, m.n, m.mse, m.mae, m.rmse)
            for name, m in zip(PARTITIONS, result.metrics_after, strict=True)
        ]
        wanted = v.read.update_encoding  # what the coordinator asked for (float32 if unknown)

        def build(
            weights: Sequence[np.ndarray] | EncodedUpdate, encoding: UpdateEncoding
        ) -> tuple[federation_pb2.ClientUpdate, list[Any]]:
            return build_update(
                task_id,
                self.station_id,
                version,
                msg.round,
                update_id,
                result.sample_count,
                scores,
                weights,
                result.train_seconds,
                self.signer,
                self.limits,
                base_weights=v.read.weights,
                encoding=encoding,
                seed=version,
            )

        residual: list[np.ndarray] | Literal[ClearResidual.CLEAR] = CLEAR_RESIDUAL
        try:
            if wanted.kind is DeltaKind.TOPK_INT8:
                encoded = self._encode_topk(
                    task_id, version, wanted, result.weights, v.read.weights
                )
                update, chunks = build(encoded.update, wanted)
                residual = encoded.residual or CLEAR_RESIDUAL
            else:
                update, chunks = build(result.weights, wanted)
        except UpdateEncodingError as exc:  # e.g. a delta beyond float16's range
            log.warning("%s v%d: %s; sending float32 weights instead", task_id, version, exc)
            residual = CLEAR_RESIDUAL
            update, chunks = build(result.weights, FLOAT32)
        if chunks:
            return Outcome(
                "too_large",
                f"update needs {len(chunks)} chunks; raise inline_bytes",
                task_id,
                version,
            )
        payload = update.SerializeToString()
        self.store.put_pending_update(
            update_id,
            task_id,
            payload,
            residual=residual,
            state={"trained_version": version, "watermark": result.new_watermark},
        )
        return Outcome("trained", result.summary(), task_id, version, (update_id, payload))

    def _encode_topk(
        self,
        task_id: str,
        version: int,
        encoding: UpdateEncoding,
        weights: Sequence[np.ndarray],
        base: Sequence[np.ndarray],
    ) -> EncodedDelta:
        """The top-k delta with the task's stored residual added; a residual whose shapes no
        longer match the model (its architecture changed) is dropped, not sent."""
        residual = self.store.residual(task_id)
        if residual is not None and [np.shape(r) for r in residual] != [np.shape(b) for b in base]:
            log.warning(
                "%s v%d: the stored top-k residual does not fit the model's shapes; dropped",
                task_id,
                version,
            )
            residual = None
        return encode_delta(weights, base, encoding, residual=residual, seed=version)
