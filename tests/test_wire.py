"""The wire format reproduces collector.md's vectors and the generated Protobuf code."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from hamustro_logging import payload_pb2, wire
from hamustro_logging.wire import Event

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


def test_generated_module_matches_proto_file(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "payload.desc"
    status = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", "payload.proto"]
    )
    assert status == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:  # protoc strips json_name from generated code
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(payload_pb2.DESCRIPTOR.serialized_pb)
    assert committed == compiled
    assert compiled.syntax in ("", "proto2")
    fields = {m.name: [(f.number, f.name) for f in m.field] for m in compiled.message_type}
    assert [n for n, _ in fields["Payload"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [n for n, _ in fields["Collection"]] == [1, 2, 3, 4, 5, 6, 7, 8]


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
