"""Both schemas' wire formats reproduce collector.md's vectors and the generated code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from hamustro_logging import payload_pb2, payload_v2_pb2, wire
from hamustro_logging.wire import Event, Event2

ROOT = Path(__file__).resolve().parent.parent

VECTOR_HEX = (
    "0a4030333230346465393265313166633863353238313339626534313930363539323065623833646266663161"
    "343636336262656134353561613665393730326264"
    "1208636c69656e742d31"
    "1a206333623236313938396466396362393565666237393137353964643337653136"
    "220a4f5320582031302e3131"
    "2a05312e302e30"
    "423208a8bfc8b50512074576656e742e31180120072a0b3230332e302e3131332e37320e7b22706c616e223a2270726f227d3801"
)
DEVICE_HASH = "03204de92e11fc8c528139be419065920eb83dbff1a4663bbea455aa6e9702bd"
SESSION = "c3b261989df9cb95efb791759dd37e16"


def vector_body() -> bytes:
    header = wire.collection_header(DEVICE_HASH, "client-1", SESSION, "OS X 10.11", "1.0.0")
    event = Event(1454514088, b"Event.1", 7, b"203.0.113.7", b'{"plan":"pro"}', True)
    return header + wire.encode_payload(event, 1)


def test_device_id_and_session_vectors() -> None:
    assert wire.sha256hex("device-1") == DEVICE_HASH
    assert wire.session_id(DEVICE_HASH, "client-1", "OS X 10.11", "1.0.0") == SESSION


def test_body_md5_and_signature_vectors() -> None:
    body = vector_body()
    assert body.hex() == VECTOR_HEX
    assert wire.md5hex(body) == "93284c65a371241c84a225a9550f3e9d"
    assert (
        wire.signature("1454514088", body, "ultrasafesecret")
        == "tKrfo9YBbqqMhsV5ofw21ji4ZamplA7AW5IWtI2/UH8="
    )


def test_hand_encoding_equals_generated_code() -> None:
    collection = payload_pb2.Collection(
        device_id=DEVICE_HASH, client_id="client-1", session=SESSION,
        system_version="OS X 10.11", product_version="1.0.0",
    )  # fmt: skip
    collection.payloads.add(
        at=1454514088, event="Event.1", nr=1, user_id=7, ip="203.0.113.7",
        parameters='{"plan":"pro"}', is_testing=True,
    )  # fmt: skip
    assert collection.SerializeToString() == vector_body()


@pytest.mark.parametrize(
    ("proto", "module", "numbers"),
    [
        ("payload.proto", payload_pb2, {"Payload": 7, "Collection": 8}),
        ("payload_v2.proto", payload_v2_pb2, {"Payload": 9, "Collection": 15, "Parameter": 2}),
    ],
)
def test_generated_module_matches_proto_file(
    tmp_path: Path, proto: str, module: Any, numbers: dict[str, int]
) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "payload.desc"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", proto])
    assert status == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:  # protoc strips json_name from generated code
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert committed == compiled
    assert compiled.syntax in ("", "proto2")
    fields = {m.name: [f.number for f in m.field] for m in compiled.message_type}
    assert fields == {name: list(range(1, n + 1)) for name, n in numbers.items()}


def test_both_schemas_load_in_one_process() -> None:
    # Distinct packages: neither module's names shadow the other's in the default pool.
    assert payload_pb2.Collection.DESCRIPTOR.full_name == "payload.Collection"
    assert payload_v2_pb2.Collection.DESCRIPTOR.full_name == "payload_v2.Collection"


def test_generated_code_is_the_protoc_3_21_builder_style() -> None:
    """No runtime version stamp: the lowest admitted protobuf (3.20) imports it (.ci/run)."""
    for module in (payload_pb2, payload_v2_pb2):
        source = Path(module.__file__ or "").read_text()
        assert "from google.protobuf.internal import builder as _builder" in source
        assert "runtime_version" not in source


texts = st.text(st.characters(codec="utf-8"), max_size=40)
events = st.builds(
    Event,
    at=st.integers(0, wire.UINT64_MAX),
    event=texts.filter(bool).map(str.encode),
    user_id=st.none() | st.integers(0, wire.UINT32_MAX),
    ip=st.none() | texts.map(str.encode),
    params=st.none() | texts.map(str.encode),
    is_testing=st.booleans(),
)


@given(st.lists(st.tuples(events, st.integers(1, wire.UINT32_MAX)), min_size=1, max_size=5),
       st.none() | st.just(b"10.1.2.3"))  # fmt: skip
def test_encoded_collection_round_trips(
    items: list[tuple[Event, int]], default_ip: bytes | None
) -> None:
    header = wire.collection_header(DEVICE_HASH, "c", SESSION, "v", "p", "Linux", "abc123")
    frames = [wire.encode_payload(event, nr, default_ip) for event, nr in items]
    assert list(wire.iter_frames(b"".join(frames))) == frames
    decoded = payload_pb2.Collection.FromString(header + b"".join(frames))
    assert decoded.IsInitialized()
    assert (decoded.system, decoded.product_git_hash) == ("Linux", "abc123")
    for (event, nr), payload in zip(items, decoded.payloads, strict=True):
        assert (payload.at, payload.event, payload.nr) == (event.at, event.event.decode(), nr)
        assert payload.HasField("user_id") == (event.user_id is not None)
        assert payload.user_id == (event.user_id or 0)
        ip = event.ip if event.ip is not None else default_ip
        assert payload.HasField("ip") == (ip is not None)
        assert payload.ip == (ip or b"").decode()
        assert payload.parameters == (event.params or b"").decode()
        assert payload.is_testing == event.is_testing
    # Byte for byte what the generated code writes for the same message.
    assert decoded.SerializeToString() == header + b"".join(frames)


def test_iter_frames_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="corrupt chunk"):
        list(wire.iter_frames(b"\x08\x01"))
    frame = wire.encode_payload(Event(1, b"e"), 1)
    with pytest.raises(ValueError, match="runs past the end"):
        list(wire.iter_frames(frame[:-1]))


# -- schema 2 ---------------------------------------------------------------------------

V2_SESSIONS = {
    "PRODUCTION": "afa05b4493e106463ae4084de91b6723",
    "BETA": "305b8e19b4fb1c42b4adffaa373aa046",
    "DEVELOPMENT": "939a35fdf3559db729bc198f2babddc5",
}
V2_VECTOR_HEX = (
    "0a4030333230346465393265313166633863353238313339626534313930363539323065623833646266663161"
    "343636336262656134353561613665393730326264"
    "1208636c69656e742d31"
    "1a203330356238653139623466623163343262346164666661613337336161303436"
    "220a4f5320582031302e3131"
    "2a05312e302e30"
    "3004"
    "7a5508a8bfc8b50512074576656e742e31180122062b30313a30302a0874656e616e742d31320675736572"
    "2d373a0b3230332e302e3131332e37420248554a0b0a04706c616e120370726f4a0a0a057365617473120133"
)
V2_EVENT = Event2(
    1454514088,
    b"Event.1",
    timezone=b"+01:00",
    tenant_id=b"tenant-1",
    user_id=b"user-7",
    ip=b"203.0.113.7",
    country=b"HU",
    params=wire.encode_parameters([(b"plan", b"pro"), (b"seats", b"3")]),
)


def v2_vector_body() -> bytes:
    beta = wire.environment("BETA")
    session = wire.session_id_v2(DEVICE_HASH, "client-1", "OS X 10.11", "1.0.0", beta)
    header = wire.collection_header_v2(
        DEVICE_HASH, "client-1", session, "OS X 10.11", "1.0.0", beta
    )
    return header + wire.encode_payloads_v2([V2_EVENT], 1)[0]


@pytest.mark.parametrize(("env", "session"), V2_SESSIONS.items())
def test_v2_session_vectors(env: str, session: str) -> None:
    number = wire.ENVIRONMENTS[env]
    assert wire.session_id_v2(DEVICE_HASH, "client-1", "OS X 10.11", "1.0.0", number) == session
    # The env's decimal number is hashed, never its name.
    assert wire.md5hex(f"{DEVICE_HASH}:client-1:OS X 10.11:1.0.0:{number}") == session


def test_v2_body_md5_and_signature_vectors() -> None:
    body = v2_vector_body()
    assert body.hex() == V2_VECTOR_HEX
    assert wire.md5hex(body) == "80a1f0b3f69cba352cf39806dd304bfa"
    assert (
        wire.signature("1454514088", body, "ultrasafesecret")
        == "Fa5WSwJ7yry7g0S8ChawQhVfb+R2xlKfBSSZD9P+H0Y="
    )


def test_v2_hand_encoding_equals_generated_code() -> None:
    collection = payload_v2_pb2.Collection(
        device_id=DEVICE_HASH, client_id="client-1", session=V2_SESSIONS["BETA"],
        system_version="OS X 10.11", product_version="1.0.0", env=payload_v2_pb2.BETA,
    )  # fmt: skip
    payload = collection.payloads.add(
        at=1454514088, event="Event.1", nr=1, timezone="+01:00", tenant_id="tenant-1",
        user_id="user-7", ip="203.0.113.7", country="HU",
    )  # fmt: skip
    payload.parameters.add(name="plan", value="pro")
    payload.parameters.add(name="seats", value="3")
    assert collection.SerializeToString() == v2_vector_body()


def test_environments_are_the_proto_enum() -> None:
    assert dict(payload_v2_pb2.Environment.items()) == wire.ENVIRONMENTS


@pytest.mark.parametrize(
    ("value", "number"),
    [("PRODUCTION", 0), ("production", 0), ("Beta", 4), (" beta ", 4), ("development", 11),
     ("quality_assurance", 9), (0, 0), (4, 4), (11, 11), ("4", 4), ("11", 11), ("007", 7)],
)  # fmt: skip
def test_environment_takes_a_name_in_any_case_or_a_number(value: object, number: int) -> None:
    assert wire.environment(value) == number


@pytest.mark.parametrize(
    "value",
    ["prod", "", "BETA4", "-1", "12", "4.0", "\u0664", -1, 12, 4.0, True, False, None, b"BETA"],
)
def test_environment_refuses_anything_else_naming_env(value: object) -> None:
    with pytest.raises(ValueError, match=r"^env must be an Environment name .* got ") as caught:
        wire.environment(value)
    assert repr(value) in str(caught.value)


def test_header_v2_refuses_an_env_the_enum_lacks() -> None:
    with pytest.raises(ValueError, match="env must be an Environment number 0-11, got 12"):
        wire.collection_header_v2(DEVICE_HASH, "c", "s", "v", "p", 12)


def test_encode_parameters_of_nothing_is_nothing() -> None:
    assert wire.encode_parameters([]) == b""
    frame = wire.encode_payloads_v2([Event2(1, b"e", params=b"")], 1)[0]
    assert frame == wire.encode_payloads_v2([Event2(1, b"e")], 1)[0]
    (payload,) = payload_v2_pb2.Collection.FromString(frame).payloads
    assert list(payload.parameters) == []


def test_frame_schema_and_iter_frames_of_both_schemas() -> None:
    one = [wire.encode_payload(Event(1, b"a"), 1), wire.encode_payload(Event(2, b"b"), 2)]
    two = wire.encode_payloads_v2([Event2(1, b"a"), Event2(2, b"b", params=V2_EVENT.params)], 1)
    assert [wire.frame_schema(f) for f in one + two] == [1, 1, 2, 2]
    assert list(wire.iter_frames(b"".join(one))) == one
    assert list(wire.iter_frames(b"".join(two))) == two
    assert list(wire.iter_frames(b"")) == []
    with pytest.raises(ValueError, match="corrupt frame"):
        wire.frame_schema(b"\x08\x01")
    with pytest.raises(ValueError, match="corrupt frame"):
        wire.frame_schema(b"")


def test_iter_frames_refuses_a_chunk_mixing_schemas() -> None:
    one = wire.encode_payload(Event(1, b"a"), 1)
    (two,) = wire.encode_payloads_v2([Event2(1, b"a")], 2)
    with pytest.raises(
        ValueError, match=f"corrupt chunk: expected a payload frame at byte {len(one)}"
    ):
        list(wire.iter_frames(one + two))
    with pytest.raises(ValueError, match=f"at byte {len(two)}"):
        list(wire.iter_frames(two + one))
    with pytest.raises(ValueError, match="runs past the end"):
        list(wire.iter_frames(two[:-1]))


def _event2(
    at: int, event: bytes, fields: tuple[str | None, ...], params: list[tuple[str, str]] | None
) -> tuple[Event2, list[tuple[str, str]] | None]:
    """An Event2 from text fields, with the parameters it was given (to compare with)."""
    timezone, tenant_id, user_id, ip, country = (None if f is None else f.encode() for f in fields)
    encoded = None
    if params is not None:
        encoded = wire.encode_parameters((n.encode(), v.encode()) for n, v in params)
    return Event2(at, event, timezone, tenant_id, user_id, ip, country, encoded), params


events2 = st.builds(
    _event2,
    at=st.integers(0, wire.UINT64_MAX),
    event=texts.filter(bool).map(str.encode),
    fields=st.tuples(*[st.none() | texts] * 5),  # timezone, tenant_id, user_id, ip, country
    params=st.none() | st.lists(st.tuples(texts, texts), max_size=4),
)
HEADER_V2_OPTIONS = (
    "device_make", "device_model", "system", "system_language", "browser", "browser_version",
    "product_git_hash", "product_language",
)  # fmt: skip


@given(st.lists(st.tuples(events2, st.integers(1, wire.UINT32_MAX)), min_size=1, max_size=5),
       st.none() | st.just(b"10.1.2.3"), st.integers(0, 11),
       st.fixed_dictionaries({}, optional={k: texts for k in HEADER_V2_OPTIONS}))  # fmt: skip
def test_v2_encoded_collection_round_trips(
    items: list[tuple[tuple[Event2, list[tuple[str, str]] | None], int]],
    default_ip: bytes | None,
    env: int,
    options: dict[str, str],
) -> None:
    session = wire.session_id_v2(DEVICE_HASH, "c", "v", "p", env)
    header = wire.collection_header_v2(DEVICE_HASH, "c", session, "v", "p", env, **options)
    frames = [wire.encode_payloads_v2([event], nr, default_ip)[0] for (event, _), nr in items]
    assert list(wire.iter_frames(b"".join(frames))) == frames
    assert {wire.frame_schema(f) for f in frames} == {2}
    decoded = payload_v2_pb2.Collection.FromString(header + b"".join(frames))
    assert decoded.IsInitialized()
    assert (decoded.session, decoded.env) == (session, env)
    for name in HEADER_V2_OPTIONS:
        assert decoded.HasField(name) == (name in options)
        assert getattr(decoded, name) == options.get(name, "")
    for ((event, params), nr), payload in zip(items, decoded.payloads, strict=True):
        assert (payload.at, payload.event, payload.nr) == (event.at, event.event.decode(), nr)
        ip = event.ip if event.ip is not None else default_ip
        given_fields = {"timezone": event.timezone, "tenant_id": event.tenant_id,
                        "user_id": event.user_id, "ip": ip, "country": event.country}  # fmt: skip
        for name, value in given_fields.items():
            assert payload.HasField(name) == (value is not None)
            assert getattr(payload, name) == (value or b"").decode()
        assert [(p.name, p.value) for p in payload.parameters] == (params or [])
    # Byte for byte what the generated code writes for the same message.
    assert decoded.SerializeToString() == header + b"".join(frames)
