from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("session_id", "station_id", "start_unix_ms", "end_unix_ms", "timezone", "energy_kwh", "vehicle_id", "charging_time_h", "connector", "charger_model", "latitude", "longitude")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_KWH_FIELD_NUMBER: _ClassVar[int]
    VEHICLE_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGING_TIME_H_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    CHARGER_MODEL_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    station_id: str
    start_unix_ms: int
    end_unix_ms: int
    timezone: str
    energy_kwh: float
    vehicle_id: str
    charging_time_h: float
    connector: str
    charger_model: str
    latitude: float
    longitude: float
    def __init__(self, session_id: _Optional[str] = ..., station_id: _Optional[str] = ..., start_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., timezone: _Optional[str] = ..., energy_kwh: _Optional[float] = ..., vehicle_id: _Optional[str] = ..., charging_time_h: _Optional[float] = ..., connector: _Optional[str] = ..., charger_model: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class SessionBatch(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class SessionRejection(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("committed", "duplicate", "rejected")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    committed: _containers.RepeatedScalarFieldContainer[str]
    duplicate: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[SessionRejection]
    def __init__(self, committed: _Optional[_Iterable[str]] = ..., duplicate: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[SessionRejection, _Mapping]]] = ...) -> None: ...
