from proto import inference_pb2 as _inference_pb2
from proto import sessions_pb2 as _sessions_pb2
from proto import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("task_id", "request_id", "features", "timeout_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    request_id: str
    features: _tensors_pb2.Tensor
    timeout_ms: float
    def __init__(self, task_id: _Optional[str] = ..., request_id: _Optional[str] = ..., features: _Optional[_Union[_tensors_pb2.Tensor, _Mapping]] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class RecordSessionsRequest(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[_sessions_pb2.Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[_sessions_pb2.Session, _Mapping]]] = ...) -> None: ...

class RecordSessionsReply(_message.Message):
    __slots__ = ("queued", "duplicate", "queue_length")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    queued: int
    duplicate: int
    queue_length: int
    def __init__(self, queued: _Optional[int] = ..., duplicate: _Optional[int] = ..., queue_length: _Optional[int] = ...) -> None: ...

class PlugState(_message.Message):
    __slots__ = ("plugged", "station_target")
    PLUGGED_FIELD_NUMBER: _ClassVar[int]
    STATION_TARGET_FIELD_NUMBER: _ClassVar[int]
    plugged: bool
    station_target: str
    def __init__(self, plugged: _Optional[bool] = ..., station_target: _Optional[str] = ...) -> None: ...

class AgentStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskModel(_message.Message):
    __slots__ = ("task_id", "version", "sha256", "previous_version")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    version: int
    sha256: str
    previous_version: int
    def __init__(self, task_id: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., previous_version: _Optional[int] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("vehicle_id", "plugged", "station_target", "queue_length", "uploaded", "models", "refused_partitions")
    VEHICLE_ID_FIELD_NUMBER: _ClassVar[int]
    PLUGGED_FIELD_NUMBER: _ClassVar[int]
    STATION_TARGET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    vehicle_id: str
    plugged: bool
    station_target: str
    queue_length: int
    uploaded: int
    models: _containers.RepeatedCompositeFieldContainer[TaskModel]
    refused_partitions: int
    def __init__(self, vehicle_id: _Optional[str] = ..., plugged: _Optional[bool] = ..., station_target: _Optional[str] = ..., queue_length: _Optional[int] = ..., uploaded: _Optional[int] = ..., models: _Optional[_Iterable[_Union[TaskModel, _Mapping]]] = ..., refused_partitions: _Optional[int] = ...) -> None: ...
