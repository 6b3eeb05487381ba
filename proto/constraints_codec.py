"""DataConstraints between the wire and models.constraints (station and coordinator only)."""

from __future__ import annotations

from datetime import UTC, datetime

from models.constraints import ConstraintsError, DataConstraints, FeatureSpec
from proto import federation_pb2 as pb
from proto import tensors_pb2
from proto.wire_errors import MalformedMessage

_DTYPES = {"float32": tensors_pb2.FLOAT32, "float64": tensors_pb2.FLOAT64}


def _ms(t: datetime | None) -> int:
    if t is None:
        return 0
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _time(ms: int) -> datetime | None:
    if ms == 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:  # outside what a datetime can hold
        raise MalformedMessage(f"constraints: time {ms} ms is out of range ({exc})") from exc


def constraints_to_proto(c: DataConstraints) -> pb.DataConstraints:
    message = pb.DataConstraints(
        target=c.target,
        min_samples=c.min_samples,
        window_start_unix_ms=_ms(c.window_start),
        window_end_unix_ms=_ms(c.window_end),
    )
    for f in c.features:
        if f.dtype not in _DTYPES:
            raise ConstraintsError(f"feature {f.name!r}: dtype {f.dtype} has no wire form")
        message.features.add(name=f.name, dtype=_DTYPES[f.dtype], shape=list(f.shape))
    return message


def constraints_from_proto(message: pb.DataConstraints) -> DataConstraints:
    names = {v: k for k, v in _DTYPES.items()}
    try:
        features = tuple(
            FeatureSpec(f.name, names[f.dtype], tuple(int(s) for s in f.shape))
            for f in message.features
        )
        return DataConstraints(
            features,
            message.target,
            int(message.min_samples),
            _time(message.window_start_unix_ms),
            _time(message.window_end_unix_ms),
        )
    except KeyError as exc:
        raise MalformedMessage(f"constraints: feature dtype {exc.args[0]} unsupported") from exc
    except ConstraintsError as exc:
        raise MalformedMessage(f"constraints: {exc}") from exc
