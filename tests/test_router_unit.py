"""`Router`, the transport-independent cloud side, with a real in-memory scheduler and real
models (a toy ONNX one and the sleep runtime), without gRPC."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from cloud_router.budget import CloudBudget, MemoryBuckets
from cloud_router.redis_keys import RedisKeys
from cloud_router.router import Router
from cloud_router.scheduler import InMemoryScheduler
from cloud_router.sleep_model import write_sleep_bundle
from protos import edgecascade_pb2 as pb
from shared.errors import CloudBudgetError, DeadlineError, InvalidInputError, ModelNotFoundError, UnavailableError
from shared.model_loader import load_model
from tests.helpers.bundles import CONFIDENT, LABELS, make_softmax_bundle


def router_for(tmp_path, **options) -> Router:
    toy = load_model(make_softmax_bundle(tmp_path / "toy", name="toy", scale=10.0))
    slow = load_model(write_sleep_bundle(tmp_path / "slow", name="slow", batch_service_ms=300))
    models = {"toy": toy, "slow": slow}
    scheduler = InMemoryScheduler(models, max_batch_size=8, max_delay_ms=1.0, max_queue=64)
    return Router(models, scheduler, router_id="r1", **options)


def run(coro):
    return asyncio.run(coro)


def test_answers_with_the_default_model_and_the_cloud_time(tmp_path):
    async def main():
        router = router_for(tmp_path)
        await router.start()
        try:
            prediction, cloud_ms = await router.infer("", CONFIDENT, time.monotonic() + 5)
        finally:
            await router.stop()
        assert prediction.label_name == LABELS[0] and prediction.model_name == "toy" and cloud_ms > 0

    run(main())


def test_refusals_are_typed(tmp_path):
    async def main():
        router = router_for(tmp_path)
        with pytest.raises(UnavailableError, match="not ready"):
            await router.infer("toy", CONFIDENT, time.monotonic() + 5)
        await router.start()
        try:
            with pytest.raises(ModelNotFoundError, match="hosts \\['slow', 'toy'\\]"):
                await router.infer("nope", CONFIDENT, time.monotonic() + 5)
            with pytest.raises(InvalidInputError, match="shape"):
                await router.infer("toy", np.zeros(4, np.float32), time.monotonic() + 5)
            with pytest.raises(DeadlineError):                     # passed before it could be queued
                await router.infer("slow", np.zeros(64, np.float32), time.monotonic() - 0.001)
        finally:
            await router.stop()

    run(main())


def test_a_worker_replica_refuses_requests(tmp_path):
    async def main():
        router = router_for(tmp_path, serves_requests=False)
        await router.start()
        try:
            with pytest.raises(UnavailableError, match="worker"):
                await router.infer("toy", CONFIDENT, time.monotonic() + 5)
        finally:
            await router.stop()

    run(main())


def test_a_spent_agent_budget_is_refused_before_any_work(tmp_path):
    async def main():
        budget = CloudBudget(MemoryBuckets(), RedisKeys("t"), agent_rps=1.0, fleet_rps=None, burst_s=1.0)
        router = router_for(tmp_path, budget=budget)
        await router.start()
        try:
            await router.infer("toy", CONFIDENT, time.monotonic() + 5, agent_id="a1")
            with pytest.raises(CloudBudgetError):
                await router.infer("toy", CONFIDENT, time.monotonic() + 5, agent_id="a1")
            await router.infer("toy", CONFIDENT, time.monotonic() + 5, agent_id="a2")   # its own bucket
        finally:
            await router.stop()

    run(main())


def test_heartbeat_records_the_agent_and_returns_its_models_pressure(tmp_path):
    async def main():
        router = router_for(tmp_path, fleet_ttl_s=10.0)
        await router.start()
        try:
            status = pb.AgentStatus(agent_id="a1", cloud_model="toy")
            pressure, depth = await router.heartbeat(status, interval_s=1.0)
            entries = await router.fleet.entries()
        finally:
            await router.stop()
        assert pressure == 0.0 and depth == 0
        assert [e.agent.agent_id for e in entries] == ["a1"]

    run(main())
