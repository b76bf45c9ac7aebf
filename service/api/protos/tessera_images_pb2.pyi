from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("image", "content_type", "model", "output", "top_k")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    content_type: str
    model: str
    output: str
    top_k: int
    def __init__(self, image: _Optional[bytes] = ..., content_type: _Optional[str] = ..., model: _Optional[str] = ..., output: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class InputInfo(_message.Message):
    __slots__ = ("format", "original", "content", "processed", "tokens", "fit")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    format: str
    original: _containers.RepeatedScalarFieldContainer[int]
    content: _containers.RepeatedScalarFieldContainer[int]
    processed: _containers.RepeatedScalarFieldContainer[int]
    tokens: int
    fit: str
    def __init__(self, format: _Optional[str] = ..., original: _Optional[_Iterable[int]] = ..., content: _Optional[_Iterable[int]] = ..., processed: _Optional[_Iterable[int]] = ..., tokens: _Optional[int] = ..., fit: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("model", "reason", "explanation", "fit", "input_size", "json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    explanation: str
    fit: str
    input_size: _containers.RepeatedScalarFieldContainer[int]
    json: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ..., explanation: _Optional[str] = ..., fit: _Optional[str] = ..., input_size: _Optional[_Iterable[int]] = ..., json: _Optional[str] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("index", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode", "preprocess", "queue", "inference", "total")
    DECODE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    decode: float
    preprocess: float
    queue: float
    inference: float
    total: float
    def __init__(self, decode: _Optional[float] = ..., preprocess: _Optional[float] = ..., queue: _Optional[float] = ..., inference: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("device", "peak_bytes", "allocated_bytes", "source")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    device: str
    peak_bytes: int
    allocated_bytes: int
    source: str
    def __init__(self, device: _Optional[str] = ..., peak_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class PredictReply(_message.Message):
    __slots__ = ("request_id", "model", "version", "backend", "precision", "weights", "weights_note", "input", "route", "embedding", "logits", "top_k", "timing_ms", "memory", "batch_size")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_NOTE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TIMING_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: int
    backend: str
    precision: str
    weights: str
    weights_note: str
    input: InputInfo
    route: Route
    embedding: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    top_k: _containers.RepeatedCompositeFieldContainer[TopK]
    timing_ms: Timing
    memory: Memory
    batch_size: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., weights: _Optional[str] = ..., weights_note: _Optional[str] = ..., input: _Optional[_Union[InputInfo, _Mapping]] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., top_k: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., timing_ms: _Optional[_Union[Timing, _Mapping]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...
