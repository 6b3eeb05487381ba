from proto import inference_pb2 as _inference_pb2
from proto import sessions_pb2 as _sessions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "serving_version", "trained_version", "updates_sent", "last_compatibility", "watermark")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINED_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_SENT_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    serving_version: int
    trained_version: int
    updates_sent: int
    last_compatibility: str
    watermark: int
    def __init__(self, task_id: _Optional[str] = ..., serving_version: _Optional[int] = ..., trained_version: _Optional[int] = ..., updates_sent: _Optional[int] = ..., last_compatibility: _Optional[str] = ..., watermark: _Optional[int] = ...) -> None: ...

class StationStatus(_message.Message):
    __slots__ = ("station_id", "sessions_stored", "sessions_rejected", "tasks")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_STORED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    sessions_stored: int
    sessions_rejected: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, station_id: _Optional[str] = ..., sessions_stored: _Optional[int] = ..., sessions_rejected: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...
