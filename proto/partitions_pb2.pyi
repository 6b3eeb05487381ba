from proto import signature_pb2 as _signature_pb2
from proto import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExitPolicyParams(_message.Message):
    __slots__ = ("thresholds",)
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, thresholds: _Optional[_Iterable[float]] = ...) -> None: ...

class PartitionManifest(_message.Message):
    __slots__ = ("task_id", "version", "partition", "format", "variant", "sha256", "size", "exit_policy", "normalization_json", "parity", "file_topic", "signature")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXIT_POLICY_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_JSON_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    FILE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    version: int
    partition: str
    format: str
    variant: str
    sha256: str
    size: int
    exit_policy: ExitPolicyParams
    normalization_json: str
    parity: _tensors_pb2.TensorBundle
    file_topic: str
    signature: _signature_pb2.Signature
    def __init__(self, task_id: _Optional[str] = ..., version: _Optional[int] = ..., partition: _Optional[str] = ..., format: _Optional[str] = ..., variant: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., exit_policy: _Optional[_Union[ExitPolicyParams, _Mapping]] = ..., normalization_json: _Optional[str] = ..., parity: _Optional[_Union[_tensors_pb2.TensorBundle, _Mapping]] = ..., file_topic: _Optional[str] = ..., signature: _Optional[_Union[_signature_pb2.Signature, _Mapping]] = ...) -> None: ...
