from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Collection(_message.Message):
    __slots__ = ["client_id", "device_id", "payloads", "product_git_hash", "product_version", "session", "system", "system_version"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_GIT_HASH_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    device_id: str
    payloads: _containers.RepeatedCompositeFieldContainer[Payload]
    product_git_hash: str
    product_version: str
    session: str
    system: str
    system_version: str
    def __init__(self, device_id: _Optional[str] = ..., client_id: _Optional[str] = ..., session: _Optional[str] = ..., system_version: _Optional[str] = ..., product_version: _Optional[str] = ..., system: _Optional[str] = ..., product_git_hash: _Optional[str] = ..., payloads: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ["at", "event", "ip", "is_testing", "nr", "parameters", "user_id"]
    AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    IS_TESTING_FIELD_NUMBER: _ClassVar[int]
    NR_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    at: int
    event: str
    ip: str
    is_testing: bool
    nr: int
    parameters: str
    user_id: int
    def __init__(self, at: _Optional[int] = ..., event: _Optional[str] = ..., nr: _Optional[int] = ..., user_id: _Optional[int] = ..., ip: _Optional[str] = ..., parameters: _Optional[str] = ..., is_testing: bool = ...) -> None: ...
