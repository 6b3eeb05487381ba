"""The station's gRPC face: session upload, the fog tier of inference, status.

Upload acks only what the store has committed: each batch of the stream is validated and
written in one transaction, and the ack at the end lists committed and duplicate ids (both
durable) and the rejected ones with a reason. Infer runs the fog partition of the version the
request's hidden tensor came from, answers when the fog exit is confident, and otherwise
relays the cloud's answer; when the cloud is unreachable it answers from the fog, flagged
degraded, rather than failing the vehicle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import grpc

from fog_node.metrics import FogMetrics
from fog_node.session_store import SessionStore
from models.datasets.validation import InvalidSession, validate_session
from models.served_partition import ServedVersions, TierResult, UnknownTask, VersionNotServed
from models.tflite_runner import BadPartitionInput
from proto import inference_pb2, sessions_pb2, station_pb2, station_pb2_grpc
from proto.infer_messages import answer, forward_request, hidden_of, tier_of
from proto.session_codec import session_from_proto
from proto.wire_errors import WireError

log = logging.getLogger("evfl.fog.service")

FOG = 1  # partition index served here


@dataclass(frozen=True)
class ServiceLimits:
    max_sessions_per_stream: int = 200_000
    cloud_timeout_s: float = 2.0


class StationServicer(station_pb2_grpc.StationServiceServicer):
    def __init__(
        self,
        station_id: str,
        accepted_station_ids: Iterable[str],
        store: SessionStore,
        served: ServedVersions,
        metrics: FogMetrics,
        cloud: station_pb2_grpc.CloudServiceStub | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.station_id = station_id
        self.accepted = frozenset(accepted_station_ids) or frozenset({station_id})
        self.store = store
        self.served = served
        self.metrics = metrics
        self.cloud = cloud
        self.limits = limits or ServiceLimits()

    # --- upload -------------------------------------------------------------------------------

    def UploadSessions(
        self, request_iterator: Iterator[sessions_pb2.SessionBatch], context: grpc.ServicerContext
    ) -> sessions_pb2.UploadAck:
        ack = sessions_pb2.UploadAck()
        seen = 0
        for batch in request_iterator:
            seen += len(batch.sessions)
            if seen > self.limits.max_sessions_per_stream:
                self.metrics.upload_streams.labels("too_large").inc()
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"stream exceeds {self.limits.max_sessions_per_stream} sessions; "
                    f"{len(ack.committed) + len(ack.duplicate)} were committed, send the rest "
                    "in another stream",
                )
            self._store_batch(batch, ack)
        if not context.is_active():
            # gRPC ends the request iterator quietly when a message does not deserialize and
            # has already answered INTERNAL; what was committed before it stays committed.
            self.metrics.upload_streams.labels("malformed").inc()
            log.warning(
                "upload: a message in the stream does not parse; stream refused after "
                "%d committed, %d duplicate",
                len(ack.committed),
                len(ack.duplicate),
            )
            return ack
        self.metrics.upload_streams.labels("ok").inc()
        if ack.rejected:
            reasons = sorted({r.reason for r in ack.rejected})
            log.warning(
                "upload: %d committed, %d duplicate, %d rejected (%s)",
                len(ack.committed),
                len(ack.duplicate),
                len(ack.rejected),
                ", ".join(reasons),
            )
        return ack

    def _store_batch(self, batch: sessions_pb2.SessionBatch, ack: sessions_pb2.UploadAck) -> None:
        good = []
        for message in batch.sessions:
            reason = None
            try:
                session = session_from_proto(message)
                validate_session(session)
                if session.station_id not in self.accepted:
                    reason = "other_station"
            except InvalidSession as exc:
                reason = exc.reason
            except WireError:
                reason = "malformed"
            if reason is None:
                good.append(session)
            else:
                ack.rejected.add(session_id=message.session_id, reason=reason)
                self.store.count_rejection(reason)
                self.metrics.sessions_rejected.labels(reason).inc()
        if good:
            result = self.store.add(good)
            ack.committed.extend(result.committed)
            ack.duplicate.extend(result.duplicate)
            self.metrics.sessions_stored.inc(len(result.committed))
            self.metrics.sessions_duplicate.inc(len(result.duplicate))

    # --- inference ----------------------------------------------------------------------------

    def Infer(
        self, request: inference_pb2.InferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        started = time.perf_counter()
        try:
            served = self.served.get(request.task_id, request.model_version)
            hidden = hidden_of(request)
            result = served.step(hidden)
        except UnknownTask as exc:
            self._refuse(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except VersionNotServed as exc:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (WireError, BadPartitionInput) as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"hidden tensor: {exc}")

        def hop() -> inference_pb2.HopTiming:
            total = (time.perf_counter() - started) * 1e3
            return inference_pb2.HopTiming(
                tier=tier_of(FOG), compute_ms=result.compute_ms, total_ms=total
            )

        if result.confident or result.hidden is None:
            response = answer(request, FOG, result.mean, result.std, [*request.hops, hop()])
        else:
            response = self._forward(request, result, hop, context)
        self.metrics.infer_latency.labels(inference_pb2.Tier.Name(response.tier).lower()).observe(
            time.perf_counter() - started
        )
        return response

    def _forward(
        self,
        request: inference_pb2.InferRequest,
        result: TierResult,
        hop: Callable[[], inference_pb2.HopTiming],
        context: grpc.ServicerContext,
    ) -> inference_pb2.InferResponse:
        if self.cloud is not None:
            timeout = self.limits.cloud_timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = max(0.001, min(timeout, remaining - 0.005))
            try:
                reply = self.cloud.Infer(
                    forward_request(request, result.hidden, hop()), timeout=timeout
                )
            except grpc.RpcError as exc:
                self.metrics.cloud_unreachable.inc()
                log.warning("cloud unreachable for %s: %s", request.request_id, exc.code().name)
            else:
                # The cloud's hops already include ours; replace it with our full time.
                hops = [h for h in reply.hops if h.tier != tier_of(FOG)]
                fog_hop = hop()
                del reply.hops[:]
                reply.hops.extend(sorted([*hops, fog_hop], key=lambda h: h.tier))
                return reply
        return answer(request, FOG, result.mean, result.std, [*request.hops, hop()], degraded=True)

    def _refuse(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        self.metrics.infer_errors.labels(code.name).inc()
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    # --- status -------------------------------------------------------------------------------

    def Status(
        self, request: station_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> station_pb2.StationStatus:
        status = station_pb2.StationStatus(
            station_id=self.station_id,
            sessions_stored=self.store.count(),
            sessions_rejected=sum(self.store.rejections().values()),
        )
        serving = self.served.tasks()
        for task_id in sorted(set(self.store.task_ids()) | set(serving)):
            state = self.store.task_state(task_id)
            status.tasks.add(
                task_id=task_id,
                serving_version=serving.get(task_id, -1),
                trained_version=state.trained_version,
                updates_sent=state.updates_sent,
                last_compatibility=state.last_compatibility,
                watermark=state.watermark,
            )
        return status
