from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

ALPHA: Environment
BETA: Environment
DESCRIPTOR: _descriptor.FileDescriptor
DEVELOPMENT: Environment
GENERAL_AVAILABILITY: Environment
NIGHTLY: Environment
PRODUCTION: Environment
QUALITY_ASSURANCE: Environment
RELEASE_CANDIDATE: Environment
RELEASE_TO_MARKETING: Environment
STAGING: Environment
TESTING: Environment
WEEKLY: Environment

class Collection(_message.Message):
    __slots__ = ["browser", "browser_version", "client_id", "device_id", "device_make", "device_model", "env", "payloads", "product_git_hash", "product_language", "product_version", "session", "system", "system_language", "system_version"]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    BROWSER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MAKE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_GIT_HASH_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_VERSION_FIELD_NUMBER: _ClassVar[int]
    browser: str
    browser_version: str
    client_id: str
    device_id: str
    device_make: str
    device_model: str
    env: Environment
    payloads: _containers.RepeatedCompositeFieldContainer[Payload]
    product_git_hash: str
    product_language: str
    product_version: str
    session: str
    system: str
    system_language: str
    system_version: str
    def __init__(self, device_id: _Optional[str] = ..., client_id: _Optional[str] = ..., session: _Optional[str] = ..., system_version: _Optional[str] = ..., product_version: _Optional[str] = ..., env: _Optional[_Union[Environment, str]] = ..., device_make: _Optional[str] = ..., device_model: _Optional[str] = ..., system: _Optional[str] = ..., system_language: _Optional[str] = ..., browser: _Optional[str] = ..., browser_version: _Optional[str] = ..., product_git_hash: _Optional[str] = ..., product_language: _Optional[str] = ..., payloads: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ...) -> None: ...

class Parameter(_message.Message):
    __slots__ = ["name", "value"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ["at", "country", "event", "ip", "nr", "parameters", "tenant_id", "timezone", "user_id"]
    AT_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NR_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    at: int
    country: str
    event: str
    ip: str
    nr: int
    parameters: _containers.RepeatedCompositeFieldContainer[Parameter]
    tenant_id: str
    timezone: str
    user_id: str
    def __init__(self, at: _Optional[int] = ..., event: _Optional[str] = ..., nr: _Optional[int] = ..., timezone: _Optional[str] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., ip: _Optional[str] = ..., country: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[Parameter, _Mapping]]] = ...) -> None: ...

class Environment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
