"""The bytes on the Redis path: one stream entry per deferred request, one reply per answer.

A stream entry has short, human-readable fields plus the request as proto bytes (tensors as
raw bytes, never JSON lists):

    t  ticket      the front end's id for this request (unique per front end process)
    r  reply_to    the front end's reply list
    d  deadline    unix time in milliseconds; a worker drops the entry after it
    i  request_id  the caller's id, for logs and the dead-letter stream
    q  request     `edgecascade.v1.InferRequest` bytes holding the tensor or the text

A reply is a `edgecascade.v1.WorkReply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from protos import edgecascade_pb2 as pb
from shared.errors import EdgecascadeError, InvalidInputError, error_named
from shared.model import ModelInput
from shared.proto_convert import infer_request
from shared.request_parsing import decode_input
from shared.tensor_codec import from_proto, to_proto


@dataclass(frozen=True)
class WorkEntry:
    ticket: str
    reply_to: str
    deadline_unix_s: float
    request_id: str
    payload: ModelInput


def encode_work(*, ticket: str, reply_to: str, deadline_unix_s: float, request_id: str, payload: ModelInput) -> dict[str, bytes]:
    request = infer_request(payload, request_id=request_id)
    return {
        "t": ticket.encode(),
        "r": reply_to.encode(),
        "d": str(int(deadline_unix_s * 1000)).encode(),
        "i": request_id.encode(),
        "q": request.SerializeToString(),
    }


def _text_field(fields: Mapping[bytes, bytes], name: bytes, what: str) -> str:
    raw = fields.get(name)
    if not raw:
        raise InvalidInputError(f"stream entry has no {what} (field {name.decode()!r})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"stream entry's {what} (field {name.decode()!r}) is not UTF-8") from None


def reply_target_of(fields: Mapping[bytes, bytes], reply_prefix: str) -> tuple[str, str] | None:
    """(reply_to, ticket) of an entry, if both look usable, so a bad entry still gets an answer."""
    try:
        reply_to = _text_field(fields, b"r", "reply key")
        ticket = _text_field(fields, b"t", "ticket")
    except InvalidInputError:
        return None
    return (reply_to, ticket) if reply_to.startswith(reply_prefix) else None


def decode_work(fields: Mapping[bytes, bytes], reply_prefix: str) -> WorkEntry:
    """Parse one stream entry, or InvalidInputError saying what is wrong with it."""
    ticket = _text_field(fields, b"t", "ticket")
    reply_to = _text_field(fields, b"r", "reply key")
    if not reply_to.startswith(reply_prefix):
        raise InvalidInputError(f"stream entry's reply key {reply_to!r} is not under {reply_prefix!r}")
    deadline_text = _text_field(fields, b"d", "deadline")
    try:
        deadline_unix_s = int(deadline_text) / 1000.0
    except ValueError:
        raise InvalidInputError(f"stream entry's deadline {deadline_text!r} is not an integer of milliseconds") from None
    request_id = fields.get(b"i", b"").decode("utf-8", "replace")
    raw = fields.get(b"q")
    if raw is None:
        raise InvalidInputError("stream entry has no request (field 'q')")
    try:
        request = pb.InferRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidInputError(f"stream entry's request is not an InferRequest: {exc}") from None
    return WorkEntry(ticket, reply_to, deadline_unix_s, request_id, decode_input(request))


def encode_reply(ticket: str, *, worker_id: str, model_ms: float, probabilities: np.ndarray | None = None,
                 error: EdgecascadeError | None = None) -> bytes:
    reply = pb.WorkReply(ticket=ticket, worker_id=worker_id, model_ms=model_ms)
    if error is not None:
        reply.error_code = type(error).__name__
        reply.error_message = str(error)
    else:
        reply.probabilities.CopyFrom(to_proto(np.asarray(probabilities, dtype=np.float32)))
    return reply.SerializeToString()


def decode_reply(raw: bytes) -> pb.WorkReply:
    try:
        return pb.WorkReply.FromString(raw)
    except DecodeError as exc:
        raise InvalidInputError(f"reply is not a WorkReply: {exc}") from None


def reply_result(reply: pb.WorkReply) -> np.ndarray:
    """The probabilities a reply carries, or the typed error it reports, raised."""
    if reply.error_code:
        raise error_named(reply.error_code, reply.error_message or reply.error_code)
    return np.asarray(from_proto(reply.probabilities), dtype=np.float32)
