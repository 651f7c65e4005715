"""SDK -> edge agent -> cloud router and back, over real gRPC on loopback."""

from __future__ import annotations

import numpy as np

from edgecascade import AsyncClient, Client
from tests.helpers.bundles import CONFIDENT, UNSURE


def test_confident_input_is_served_by_edge(edge_daemon):
    with Client(edge_daemon.target) as client:
        result = client.infer(CONFIDENT, timeout_s=2.0, request_id="r-1")
    assert result.served_by == "edge"
    assert result.request_id == "r-1"
    assert result.model_name == "toy-edge" and result.model_version == "1"
    assert result.label_name == "a"
    assert result.max_prob > 0.9 and result.cloud_ms == 0.0
    assert np.isclose(result.probabilities.sum(), 1.0, atol=1e-5)


def test_unsure_input_is_deferred_to_cloud(edge_daemon):
    with Client(edge_daemon.target) as client:
        result = client.infer(UNSURE, timeout_s=2.0)
    assert result.served_by == "cloud"
    assert result.defer_reason == "low_confidence"
    assert result.model_name == "toy-cloud"
    # the cloud model rotates labels: its answer differs from the edge's, proving it came from the cloud
    assert result.label_name == "b"
    assert result.cloud_ms > 0 and result.edge_ms > 0
    assert result.max_prob < 0.6  # the edge's own signals are reported


def test_async_client(edge_daemon):
    import asyncio

    async def main():
        async with AsyncClient(edge_daemon.target) as client:
            return await asyncio.gather(*(client.infer(x) for x in [CONFIDENT, UNSURE] * 10))

    routes = [r.served_by for r in asyncio.run(main())]
    assert routes.count("edge") == 10 and routes.count("cloud") == 10


def test_status_reports_route_counts(edge_daemon):
    with Client(edge_daemon.target) as client:
        client.infer(CONFIDENT)
        client.infer(UNSURE)
        status = client.status()
    assert status.route_counts["edge"] == 1 and status.route_counts["cloud"] == 1
    assert status.breaker_state == "closed"
