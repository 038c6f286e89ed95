from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskIdentity(_message.Message):
    __slots__ = ("selector", "task_hash", "spec_hash", "data_hash", "canonical_spec")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TASK_HASH_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    DATA_HASH_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_SPEC_FIELD_NUMBER: _ClassVar[int]
    selector: str
    task_hash: str
    spec_hash: str
    data_hash: str
    canonical_spec: str
    def __init__(self, selector: _Optional[str] = ..., task_hash: _Optional[str] = ..., spec_hash: _Optional[str] = ..., data_hash: _Optional[str] = ..., canonical_spec: _Optional[str] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("protocol_version", "task")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    task: TaskIdentity
    def __init__(self, protocol_version: _Optional[str] = ..., task: _Optional[_Union[TaskIdentity, _Mapping]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("protocol_version", "task", "session_id", "prover_info")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROVER_INFO_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    task: TaskIdentity
    session_id: str
    prover_info: str
    def __init__(self, protocol_version: _Optional[str] = ..., task: _Optional[_Union[TaskIdentity, _Mapping]] = ..., session_id: _Optional[str] = ..., prover_info: _Optional[str] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ClaimSummary(_message.Message):
    __slots__ = ("digest", "datamodel_samples", "method")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATAMODEL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    datamodel_samples: int
    method: str
    def __init__(self, digest: _Optional[bytes] = ..., datamodel_samples: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class ClaimChunk(_message.Message):
    __slots__ = ("attribution", "summary")
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    attribution: AttributionPart
    summary: ClaimSummary
    def __init__(self, attribution: _Optional[_Union[AttributionPart, _Mapping]] = ..., summary: _Optional[_Union[ClaimSummary, _Mapping]] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("session_id", "public_seed", "num_tuples", "rho", "first_tuple")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_TUPLES_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    FIRST_TUPLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    public_seed: bytes
    num_tuples: int
    rho: float
    first_tuple: int
    def __init__(self, session_id: _Optional[str] = ..., public_seed: _Optional[bytes] = ..., num_tuples: _Optional[int] = ..., rho: _Optional[float] = ..., first_tuple: _Optional[int] = ...) -> None: ...

class AttributionPart(_message.Message):
    __slots__ = ("target", "intercept", "offset", "coefficients")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    target: int
    intercept: float
    offset: int
    coefficients: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, target: _Optional[int] = ..., intercept: _Optional[float] = ..., offset: _Optional[int] = ..., coefficients: _Optional[_Iterable[float]] = ...) -> None: ...

class FValuesPart(_message.Message):
    __slots__ = ("first_index", "count", "values")
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    first_index: int
    count: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, first_index: _Optional[int] = ..., count: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class CommitmentRoot(_message.Message):
    __slots__ = ("merkle_root", "num_leaves", "prover_retrainings")
    MERKLE_ROOT_FIELD_NUMBER: _ClassVar[int]
    NUM_LEAVES_FIELD_NUMBER: _ClassVar[int]
    PROVER_RETRAININGS_FIELD_NUMBER: _ClassVar[int]
    merkle_root: bytes
    num_leaves: int
    prover_retrainings: int
    def __init__(self, merkle_root: _Optional[bytes] = ..., num_leaves: _Optional[int] = ..., prover_retrainings: _Optional[int] = ...) -> None: ...

class CommitChunk(_message.Message):
    __slots__ = ("f_values", "root")
    F_VALUES_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    f_values: FValuesPart
    root: CommitmentRoot
    def __init__(self, f_values: _Optional[_Union[FValuesPart, _Mapping]] = ..., root: _Optional[_Union[CommitmentRoot, _Mapping]] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("session_id", "indices", "with_weights")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    WITH_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    with_weights: bool
    def __init__(self, session_id: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., with_weights: _Optional[bool] = ...) -> None: ...

class OpenAllRequest(_message.Message):
    __slots__ = ("session_id", "round")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class OpeningBatch(_message.Message):
    __slots__ = ("first_index", "count", "f_values", "seeds", "weights_digests", "weights")
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    F_VALUES_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    first_index: int
    count: int
    f_values: _containers.RepeatedScalarFieldContainer[float]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    weights_digests: bytes
    weights: bytes
    def __init__(self, first_index: _Optional[int] = ..., count: _Optional[int] = ..., f_values: _Optional[_Iterable[float]] = ..., seeds: _Optional[_Iterable[int]] = ..., weights_digests: _Optional[bytes] = ..., weights: _Optional[bytes] = ...) -> None: ...

class Opening(_message.Message):
    __slots__ = ("index", "seed", "f_values", "weights_digest", "proof", "weights")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    F_VALUES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    seed: int
    f_values: _containers.RepeatedScalarFieldContainer[float]
    weights_digest: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    weights: bytes
    def __init__(self, index: _Optional[int] = ..., seed: _Optional[int] = ..., f_values: _Optional[_Iterable[float]] = ..., weights_digest: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ..., weights: _Optional[bytes] = ...) -> None: ...

class ModelsRequest(_message.Message):
    __slots__ = ("session_id", "sample_key", "first", "count")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sample_key: bytes
    first: int
    count: int
    def __init__(self, session_id: _Optional[str] = ..., sample_key: _Optional[bytes] = ..., first: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class SuppliedModel(_message.Message):
    __slots__ = ("index", "weights")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    weights: bytes
    def __init__(self, index: _Optional[int] = ..., weights: _Optional[bytes] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("session_id", "verdict", "transcript_hash")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_HASH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    verdict: str
    transcript_hash: bytes
    def __init__(self, session_id: _Optional[str] = ..., verdict: _Optional[str] = ..., transcript_hash: _Optional[bytes] = ...) -> None: ...

class FinishReply(_message.Message):
    __slots__ = ("transcript_hash",)
    TRANSCRIPT_HASH_FIELD_NUMBER: _ClassVar[int]
    transcript_hash: bytes
    def __init__(self, transcript_hash: _Optional[bytes] = ...) -> None: ...
