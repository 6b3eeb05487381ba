from proto import partitions_pb2 as _partitions_pb2
from proto import signature_pb2 as _signature_pb2
from proto import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_FLOAT32: _ClassVar[UpdateEncoding]
    UPDATE_FLOAT16_DELTA: _ClassVar[UpdateEncoding]
    UPDATE_INT8_DELTA: _ClassVar[UpdateEncoding]
    UPDATE_TOPK_INT8_DELTA: _ClassVar[UpdateEncoding]
UPDATE_FLOAT32: UpdateEncoding
UPDATE_FLOAT16_DELTA: UpdateEncoding
UPDATE_INT8_DELTA: UpdateEncoding
UPDATE_TOPK_INT8_DELTA: UpdateEncoding

class UpdateEncodingRequest(_message.Message):
    __slots__ = ("encoding", "topk_fraction", "stochastic_rounding")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STOCHASTIC_ROUNDING_FIELD_NUMBER: _ClassVar[int]
    encoding: UpdateEncoding
    topk_fraction: float
    stochastic_rounding: bool
    def __init__(self, encoding: _Optional[_Union[UpdateEncoding, str]] = ..., topk_fraction: _Optional[float] = ..., stochastic_rounding: _Optional[bool] = ...) -> None: ...

class FeatureSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensors_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensors_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DataConstraints(_message.Message):
    __slots__ = ("features", "target", "min_samples", "window_start_unix_ms", "window_end_unix_ms")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureSpec]
    target: str
    min_samples: int
    window_start_unix_ms: int
    window_end_unix_ms: int
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureSpec, _Mapping]]] = ..., target: _Optional[str] = ..., min_samples: _Optional[int] = ..., window_start_unix_ms: _Optional[int] = ..., window_end_unix_ms: _Optional[int] = ...) -> None: ...

class ModelAnnouncement(_message.Message):
    __slots__ = ("task_id", "version", "round", "model_config_json", "preprocessing_json", "weights", "constraints", "round_deadline_unix_ms", "announced_unix_ms", "exit_policy", "update_encoding", "signature")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    ROUND_DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXIT_POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    version: int
    round: int
    model_config_json: str
    preprocessing_json: str
    weights: _tensors_pb2.Blob
    constraints: DataConstraints
    round_deadline_unix_ms: int
    announced_unix_ms: int
    exit_policy: _partitions_pb2.ExitPolicyParams
    update_encoding: UpdateEncodingRequest
    signature: _signature_pb2.Signature
    def __init__(self, task_id: _Optional[str] = ..., version: _Optional[int] = ..., round: _Optional[int] = ..., model_config_json: _Optional[str] = ..., preprocessing_json: _Optional[str] = ..., weights: _Optional[_Union[_tensors_pb2.Blob, _Mapping]] = ..., constraints: _Optional[_Union[DataConstraints, _Mapping]] = ..., round_deadline_unix_ms: _Optional[int] = ..., announced_unix_ms: _Optional[int] = ..., exit_policy: _Optional[_Union[_partitions_pb2.ExitPolicyParams, _Mapping]] = ..., update_encoding: _Optional[_Union[UpdateEncodingRequest, _Mapping]] = ..., signature: _Optional[_Union[_signature_pb2.Signature, _Mapping]] = ...) -> None: ...

class ExitMetric(_message.Message):
    __slots__ = ("exit", "count", "mse", "mae", "rmse")
    EXIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MSE_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    exit: str
    count: int
    mse: float
    mae: float
    rmse: float
    def __init__(self, exit: _Optional[str] = ..., count: _Optional[int] = ..., mse: _Optional[float] = ..., mae: _Optional[float] = ..., rmse: _Optional[float] = ...) -> None: ...

class ClientUpdate(_message.Message):
    __slots__ = ("task_id", "station_id", "base_version", "update_id", "sample_count", "metrics", "weights", "is_delta", "train_seconds", "round", "encoding", "base_sha256", "signature")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    IS_DELTA_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    station_id: str
    base_version: int
    update_id: str
    sample_count: int
    metrics: _containers.RepeatedCompositeFieldContainer[ExitMetric]
    weights: _tensors_pb2.Blob
    is_delta: bool
    train_seconds: float
    round: int
    encoding: UpdateEncoding
    base_sha256: str
    signature: _signature_pb2.Signature
    def __init__(self, task_id: _Optional[str] = ..., station_id: _Optional[str] = ..., base_version: _Optional[int] = ..., update_id: _Optional[str] = ..., sample_count: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[ExitMetric, _Mapping]]] = ..., weights: _Optional[_Union[_tensors_pb2.Blob, _Mapping]] = ..., is_delta: _Optional[bool] = ..., train_seconds: _Optional[float] = ..., round: _Optional[int] = ..., encoding: _Optional[_Union[UpdateEncoding, str]] = ..., base_sha256: _Optional[str] = ..., signature: _Optional[_Union[_signature_pb2.Signature, _Mapping]] = ...) -> None: ...
