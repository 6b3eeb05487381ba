"""The agent's local API (gRPC, on a Unix socket by default): what apps on the car call.

Predict runs the edge partition and answers locally when its exit is confident by the
manifest's calibrated threshold; otherwise it forwards the hidden tensor to the station and
relays the deeper tier's answer, or — station unreachable — answers locally flagged degraded.
Every answer names the tier that answered and the time spent at each hop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NoReturn

import grpc
import numpy as np

from agent.forwarder import Forwarder
from agent.upload_queue import UploadQueue
from models.tflite_runner import BadPartitionInput
from proto import agent_pb2, agent_pb2_grpc, inference_pb2
from proto.infer_messages import tier_of
from proto.session_codec import session_from_proto
from proto.tensor_codec import decode_tensor, encode_tensor
from proto.wire_errors import WireError

if TYPE_CHECKING:
    from agent.edge_runtime import EdgeRuntime
    from agent.model_store import ModelStore
    from agent.uploader import Uploader

log = logging.getLogger("evfl.agent.api")

EDGE = 0


class AgentServicer(agent_pb2_grpc.VehicleAgentServicer):
    def __init__(
        self,
        vehicle_id: str,
        runtime: EdgeRuntime,
        forwarder: Forwarder,
        queue: UploadQueue,
        uploader: Uploader,
        store: ModelStore,
        answer_timeout_s: float,
        refusals: dict[str, int] | None = None,
    ) -> None:
        self.vehicle_id = vehicle_id
        self.runtime = runtime
        self.forwarder = forwarder
        self.queue = queue
        self.uploader = uploader
        self.store = store
        self.answer_timeout_s = answer_timeout_s
        self.refusals = refusals if refusals is not None else {}
        self.answered: dict[str, int] = {}
        self.requests_refused: dict[str, int] = {}  # by gRPC status code, lower case

    def Predict(
        self, request: agent_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        started = time.perf_counter()
        timeout = request.timeout_ms / 1e3 if request.timeout_ms > 0 else self.answer_timeout_s
        if self.runtime.active(request.task_id) is None:
            self._refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"no model for task {request.task_id!r} yet (waiting for an update)",
            )
        try:
            features = decode_tensor(request.features)
            local = self.runtime.predict_local(request.task_id, np.asarray(features, np.float32))
        except (WireError, BadPartitionInput) as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"features: {exc}")
        result = local.result
        edge_hop = inference_pb2.HopTiming(
            tier=tier_of(EDGE),
            compute_ms=local.normalize_ms + result.compute_ms,
            total_ms=(time.perf_counter() - started) * 1e3,
        )
        reply = None
        if not result.confident and result.hidden is not None:
            forward = inference_pb2.InferRequest(
                task_id=request.task_id,
                request_id=request.request_id,
                model_version=local.version,
                hidden=encode_tensor(np.ascontiguousarray(result.hidden), "edge_hidden"),
                hops=[edge_hop],
            )
            remaining = timeout - (time.perf_counter() - started)
            reply = self.forwarder.forward(forward, remaining) if remaining > 0 else None
        if reply is None:
            reply = inference_pb2.InferResponse(
                request_id=request.request_id,
                tier=tier_of(EDGE),
                exit_index=EDGE,
                prediction=result.mean,
                uncertainty=result.std,
                model_version=local.version,
                degraded=not result.confident,
            )
            reply.hops.append(edge_hop)
        for hop in reply.hops:
            if hop.tier == tier_of(EDGE):
                hop.total_ms = (time.perf_counter() - started) * 1e3
        key = "degraded" if reply.degraded else inference_pb2.Tier.Name(reply.tier).lower()
        self.answered[key] = self.answered.get(key, 0) + 1
        return reply

    def RecordSessions(
        self, request: agent_pb2.RecordSessionsRequest, context: grpc.ServicerContext
    ) -> agent_pb2.RecordSessionsReply:
        try:
            sessions = [session_from_proto(m) for m in request.sessions]
        except WireError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"session: {exc}")
        result = self.queue.enqueue(sessions)
        return agent_pb2.RecordSessionsReply(
            queued=len(result.queued),
            duplicate=len(result.duplicate),
            queue_length=len(self.queue),
        )

    def SetPlugState(
        self, request: agent_pb2.PlugState, context: grpc.ServicerContext
    ) -> agent_pb2.AgentStatus:
        if request.plugged:
            if not request.station_target:
                self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "plugged needs station_target"
                )
            self.uploader.plug(request.station_target)
            log.info(
                "plugged in at %s: uploading %d sessions", request.station_target, len(self.queue)
            )
        else:
            self.uploader.unplug()
        return self.Status(agent_pb2.AgentStatusRequest(), context)

    def _refuse(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        """Count a refused request by its status code, log it once, and abort the call."""
        key = code.name.lower()
        self.requests_refused[key] = self.requests_refused.get(key, 0) + 1
        log.warning("request refused: %s: %s", code.name, message)
        _abort(context, code, message)

    def Status(
        self, request: agent_pb2.AgentStatusRequest, context: grpc.ServicerContext
    ) -> agent_pb2.AgentStatus:
        status = agent_pb2.AgentStatus(
            vehicle_id=self.vehicle_id,
            plugged=self.uploader.target is not None,
            station_target=self.uploader.target or "",
            queue_length=len(self.queue),
            uploaded=self.queue.uploaded_count(),
            refused_partitions=sum(self.refusals.values()),
        )
        for task_id in self.runtime.tasks():
            active = self.runtime.active(task_id)
            if active is None:
                continue
            previous = self.store.previous(task_id)
            status.models.add(
                task_id=task_id,
                version=active[0],
                sha256=active[1],
                previous_version=-1 if previous is None else previous.manifest.version,
            )
        return status


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
