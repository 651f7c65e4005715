"""gRPC channel and server options, in one place for the SDK, the cloud link, the update
client and both daemons' servers."""

from __future__ import annotations

Options = list[tuple[str, int]]


def message_limits(max_receive_bytes: int, max_send_bytes: int | None = None) -> Options:
    """Largest message received and sent (`max_send_bytes` defaults to the receive limit)."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_receive_bytes if max_send_bytes is None else max_send_bytes),
    ]


def server_options(max_message_bytes: int) -> Options:
    """A daemon's server: messages over the limit get RESOURCE_EXHAUSTED from gRPC itself; one
    process per port (no SO_REUSEPORT sharing)."""
    return [*message_limits(max_message_bytes), ("grpc.so_reuseport", 0)]


def channel_options(max_message_bytes: int, *, fail_fast: bool = False) -> Options:
    """A client channel that reconnects quickly after the peer comes back (gRPC's default
    backoff grows to 120 s). `fail_fast` (the edge's cloud link, which has a breaker and a
    fallback): reconnect attempts at least every 100 ms, and no transparent gRPC retries."""
    options = [
        *message_limits(max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if fail_fast:
        options += [("grpc.min_reconnect_backoff_ms", 100), ("grpc.enable_retries", 0)]
    return options
