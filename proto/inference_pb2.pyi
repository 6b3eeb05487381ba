from proto import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    EDGE: _ClassVar[Tier]
    FOG: _ClassVar[Tier]
    CLOUD: _ClassVar[Tier]
TIER_UNSPECIFIED: Tier
EDGE: Tier
FOG: Tier
CLOUD: Tier

class HopTiming(_message.Message):
    __slots__ = ("tier", "compute_ms", "total_ms")
    TIER_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    compute_ms: float
    total_ms: float
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., compute_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("task_id", "request_id", "model_version", "hidden", "hops")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    request_id: str
    model_version: int
    hidden: _tensors_pb2.Tensor
    hops: _containers.RepeatedCompositeFieldContainer[HopTiming]
    def __init__(self, task_id: _Optional[str] = ..., request_id: _Optional[str] = ..., model_version: _Optional[int] = ..., hidden: _Optional[_Union[_tensors_pb2.Tensor, _Mapping]] = ..., hops: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "tier", "exit_index", "prediction", "uncertainty", "model_version", "hops", "degraded")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    EXIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: Tier
    exit_index: int
    prediction: float
    uncertainty: float
    model_version: int
    hops: _containers.RepeatedCompositeFieldContainer[HopTiming]
    degraded: bool
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., exit_index: _Optional[int] = ..., prediction: _Optional[float] = ..., uncertainty: _Optional[float] = ..., model_version: _Optional[int] = ..., hops: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ..., degraded: _Optional[bool] = ...) -> None: ...
