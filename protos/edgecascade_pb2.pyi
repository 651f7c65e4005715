from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Route(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_UNSPECIFIED: _ClassVar[Route]
    EDGE: _ClassVar[Route]
    CLOUD: _ClassVar[Route]
    EDGE_FALLBACK: _ClassVar[Route]
    ABSTAIN: _ClassVar[Route]
ROUTE_UNSPECIFIED: Route
EDGE: Route
CLOUD: Route
EDGE_FALLBACK: Route
ABSTAIN: Route

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Signals(_message.Message):
    __slots__ = ("max_prob", "margin", "entropy")
    MAX_PROB_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    max_prob: float
    margin: float
    entropy: float
    def __init__(self, max_prob: _Optional[float] = ..., margin: _Optional[float] = ..., entropy: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model", "request_id", "tensor", "text", "priority", "timeout_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    tensor: Tensor
    text: str
    priority: int
    timeout_ms: float
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., text: _Optional[str] = ..., priority: _Optional[int] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "served_by", "label", "label_name", "probabilities", "signals", "model_name", "model_version", "edge_ms", "cloud_ms", "defer_reason", "fallback_reason", "abstain_reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EDGE_MS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MS_FIELD_NUMBER: _ClassVar[int]
    DEFER_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    served_by: Route
    label: int
    label_name: str
    probabilities: Tensor
    signals: Signals
    model_name: str
    model_version: str
    edge_ms: float
    cloud_ms: float
    defer_reason: str
    fallback_reason: str
    abstain_reason: str
    def __init__(self, request_id: _Optional[str] = ..., served_by: _Optional[_Union[Route, str]] = ..., label: _Optional[int] = ..., label_name: _Optional[str] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., signals: _Optional[_Union[Signals, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., edge_ms: _Optional[float] = ..., cloud_ms: _Optional[float] = ..., defer_reason: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., abstain_reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "model_name", "model_version", "breaker_state", "route_counts", "threshold", "cloud_pressure", "policy_signal", "base_threshold", "min_threshold", "fallback_counts", "cloud_model", "abstain_threshold", "cloud_abstain_threshold", "out_of_scope_label")
    class RouteCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FallbackCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLOUD_PRESSURE_FIELD_NUMBER: _ClassVar[int]
    POLICY_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    BASE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ABSTAIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_LABEL_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model_name: str
    model_version: str
    breaker_state: str
    route_counts: _containers.ScalarMap[str, int]
    threshold: float
    cloud_pressure: float
    policy_signal: str
    base_threshold: float
    min_threshold: float
    fallback_counts: _containers.ScalarMap[str, int]
    cloud_model: str
    abstain_threshold: float
    cloud_abstain_threshold: float
    out_of_scope_label: str
    def __init__(self, agent_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., breaker_state: _Optional[str] = ..., route_counts: _Optional[_Mapping[str, int]] = ..., threshold: _Optional[float] = ..., cloud_pressure: _Optional[float] = ..., policy_signal: _Optional[str] = ..., base_threshold: _Optional[float] = ..., min_threshold: _Optional[float] = ..., fallback_counts: _Optional[_Mapping[str, int]] = ..., cloud_model: _Optional[str] = ..., abstain_threshold: _Optional[float] = ..., cloud_abstain_threshold: _Optional[float] = ..., out_of_scope_label: _Optional[str] = ...) -> None: ...

class RouterStatus(_message.Message):
    __slots__ = ("router_id", "models", "queue_depth", "pressure")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    queue_depth: int
    pressure: float
    def __init__(self, router_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., queue_depth: _Optional[int] = ..., pressure: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("status", "interval_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    interval_s: float
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ..., interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("router_id", "pressure", "queue_depth", "budget_agent_rps", "budget_fleet_rps")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BUDGET_AGENT_RPS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FLEET_RPS_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    pressure: float
    queue_depth: int
    budget_agent_rps: float
    budget_fleet_rps: float
    def __init__(self, router_id: _Optional[str] = ..., pressure: _Optional[float] = ..., queue_depth: _Optional[int] = ..., budget_agent_rps: _Optional[float] = ..., budget_fleet_rps: _Optional[float] = ...) -> None: ...

class FleetEntry(_message.Message):
    __slots__ = ("agent", "last_seen_unix_s", "expires_unix_s", "router_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    agent: AgentStatus
    last_seen_unix_s: float
    expires_unix_s: float
    router_id: str
    def __init__(self, agent: _Optional[_Union[AgentStatus, _Mapping]] = ..., last_seen_unix_s: _Optional[float] = ..., expires_unix_s: _Optional[float] = ..., router_id: _Optional[str] = ...) -> None: ...

class FleetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetStatus(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[FleetEntry]
    def __init__(self, agents: _Optional[_Iterable[_Union[FleetEntry, _Mapping]]] = ...) -> None: ...

class PublishUpdateRequest(_message.Message):
    __slots__ = ("signed_manifest", "canary_percent", "payload_chunk")
    SIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_CHUNK_FIELD_NUMBER: _ClassVar[int]
    signed_manifest: bytes
    canary_percent: float
    payload_chunk: bytes
    def __init__(self, signed_manifest: _Optional[bytes] = ..., canary_percent: _Optional[float] = ..., payload_chunk: _Optional[bytes] = ...) -> None: ...

class PublishUpdateResponse(_message.Message):
    __slots__ = ("update_id", "model_name", "version", "rollback", "payload_bytes", "target_bytes", "patch_format")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATCH_FORMAT_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    model_name: str
    version: int
    rollback: bool
    payload_bytes: int
    target_bytes: int
    patch_format: str
    def __init__(self, update_id: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., rollback: _Optional[bool] = ..., payload_bytes: _Optional[int] = ..., target_bytes: _Optional[int] = ..., patch_format: _Optional[str] = ...) -> None: ...

class UpdateNoticeRequest(_message.Message):
    __slots__ = ("agent_id", "model_name", "model_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model_name: str
    model_version: int
    def __init__(self, agent_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class UpdateNotice(_message.Message):
    __slots__ = ("available", "update_id", "signed_manifest")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    available: bool
    update_id: str
    signed_manifest: bytes
    def __init__(self, available: _Optional[bool] = ..., update_id: _Optional[str] = ..., signed_manifest: _Optional[bytes] = ...) -> None: ...

class PatchChunkRequest(_message.Message):
    __slots__ = ("update_id", "index")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    index: int
    def __init__(self, update_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class PatchChunk(_message.Message):
    __slots__ = ("update_id", "index", "data")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    index: int
    data: bytes
    def __init__(self, update_id: _Optional[str] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdateStateReport(_message.Message):
    __slots__ = ("agent_id", "model_name", "update_id", "version", "state", "reason", "message", "active_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model_name: str
    update_id: str
    version: int
    state: str
    reason: str
    message: str
    active_version: int
    def __init__(self, agent_id: _Optional[str] = ..., model_name: _Optional[str] = ..., update_id: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., active_version: _Optional[int] = ...) -> None: ...

class UpdateStateAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutStatusRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class RolloutInfo(_message.Message):
    __slots__ = ("update_id", "model_name", "version", "rollback", "phase", "canary_percent", "payload_bytes", "target_bytes", "patch_format", "published_unix_s")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATCH_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    model_name: str
    version: int
    rollback: bool
    phase: str
    canary_percent: float
    payload_bytes: int
    target_bytes: int
    patch_format: str
    published_unix_s: float
    def __init__(self, update_id: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., rollback: _Optional[bool] = ..., phase: _Optional[str] = ..., canary_percent: _Optional[float] = ..., payload_bytes: _Optional[int] = ..., target_bytes: _Optional[int] = ..., patch_format: _Optional[str] = ..., published_unix_s: _Optional[float] = ...) -> None: ...

class AgentUpdateState(_message.Message):
    __slots__ = ("agent_id", "model_name", "active_version", "update_id", "version", "state", "reason", "message", "canary", "last_seen_unix_s")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model_name: str
    active_version: int
    update_id: str
    version: int
    state: str
    reason: str
    message: str
    canary: bool
    last_seen_unix_s: float
    def __init__(self, agent_id: _Optional[str] = ..., model_name: _Optional[str] = ..., active_version: _Optional[int] = ..., update_id: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., canary: _Optional[bool] = ..., last_seen_unix_s: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("rollouts", "agents")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutInfo]
    agents: _containers.RepeatedCompositeFieldContainer[AgentUpdateState]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutInfo, _Mapping]]] = ..., agents: _Optional[_Iterable[_Union[AgentUpdateState, _Mapping]]] = ...) -> None: ...

class WorkReply(_message.Message):
    __slots__ = ("ticket", "probabilities", "error_code", "error_message", "worker_id", "model_ms")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    ticket: str
    probabilities: Tensor
    error_code: str
    error_message: str
    worker_id: str
    model_ms: float
    def __init__(self, ticket: _Optional[str] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., worker_id: _Optional[str] = ..., model_ms: _Optional[float] = ...) -> None: ...
