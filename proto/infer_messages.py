"""Building and reading the Infer messages every tier exchanges (edge, fog, cloud)."""

from __future__ import annotations

import numpy as np

from proto import inference_pb2 as pb
from proto.limits import WireLimits
from proto.tensor_codec import decode_tensor, encode_tensor
from proto.wire_errors import BadTensor, MalformedMessage

TIERS = (pb.EDGE, pb.FOG, pb.CLOUD)  # by partition index


def tier_of(index: int) -> int:
    return TIERS[index]


def hidden_of(request: pb.InferRequest, limits: WireLimits | None = None) -> np.ndarray:
    """The request's hidden tensor, checked; raises a WireError subclass when it is bad."""
    if not request.task_id:
        raise MalformedMessage("InferRequest without task_id")
    if not request.HasField("hidden"):
        raise MalformedMessage(f"InferRequest {request.request_id!r} without a hidden tensor")
    hidden = decode_tensor(request.hidden, limits or WireLimits())
    if hidden.dtype.kind != "f":
        # A partition's hidden output is always floating point; integers or bools here are
        # a client bug or an attack, not activations to cast silently.
        raise BadTensor(
            f"InferRequest {request.request_id!r}: hidden tensor has dtype {hidden.dtype}, "
            "expected a float type"
        )
    return hidden


def forward_request(
    request: pb.InferRequest, hidden: np.ndarray, hop: pb.HopTiming
) -> pb.InferRequest:
    """The request the next tier gets: same ids and version, our hidden tensor, our timing."""
    return pb.InferRequest(
        task_id=request.task_id,
        request_id=request.request_id,
        model_version=request.model_version,
        hidden=encode_tensor(np.ascontiguousarray(hidden), "hidden"),
        hops=[*request.hops, hop],
    )


def answer(
    request: pb.InferRequest,
    index: int,
    prediction: float,
    uncertainty: float,
    hops: list[pb.HopTiming],
    degraded: bool = False,
) -> pb.InferResponse:
    return pb.InferResponse(
        request_id=request.request_id,
        tier=tier_of(index),
        exit_index=index,
        prediction=prediction,
        uncertainty=uncertainty,
        model_version=request.model_version,
        hops=hops,
        degraded=degraded,
    )
