"""The breaker's half-open trial: however it ends (here: the caller cancels it), the breaker
settles and the cloud is used again. Real agent and router on loopback."""

from __future__ import annotations

import asyncio
import time

from cloud_router.sleep_model import write_sleep_bundle
from edgecascade import AsyncClient, Client
from edgecascade.processes import InProcessDaemon
from shared.model_card import InputSpec
from tests.helpers.bundles import LABELS, UNSURE

CLOUD_SERVICE_MS = 800.0   # long enough that a trial is still in flight when the caller cancels it
COOLDOWN_S = 0.2


async def _cancel_after(target: str, delay_s: float) -> None:
    async with AsyncClient(target, timeout_s=10.0) as client:
        call = asyncio.ensure_future(client.infer(UNSURE, request_id="trial"))
        await asyncio.sleep(delay_s)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass


def test_cancelled_half_open_trial_frees_the_breaker(tmp_path, bundles):
    slow = write_sleep_bundle(tmp_path / "slow", name="slow", labels=LABELS, batch_service_ms=CLOUD_SERVICE_MS,
                              input_spec=InputSpec(kind="tensor", dtype="float32", shape=[3]))
    with InProcessDaemon("cloud", {"model_dirs": [str(slow)], "max_delay_ms": 0.0}, tmp_path, name="cloud") as cloud:
        settings = {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target,
                    "breaker_failure_threshold": 1, "breaker_cooldown_s": COOLDOWN_S}
        with InProcessDaemon("edge", settings, tmp_path, name="edge") as edge:
            with Client(edge.target) as client:
                opened = client.infer(UNSURE, timeout_s=0.3, request_id="opens")   # the cloud is too slow: opens
                assert (opened.served_by, opened.fallback_reason) == ("edge_fallback", "deadline")
                time.sleep(CLOUD_SERVICE_MS / 1000.0 + COOLDOWN_S)                 # cloud idle, breaker half-open
                asyncio.run(_cancel_after(edge.target, 0.3))                        # the trial, cancelled mid-call
                after = [client.infer(UNSURE, timeout_s=10.0, request_id=f"after{i}") for i in range(3)]
    routes = [(r.served_by, r.fallback_reason) for r in after]
    assert ("cloud", "") in routes, f"the breaker never let a call through again: {routes}"
