"""Helpers for the model-update tests: toy bundles, keys, packages, and waiting on real daemons."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar, Union

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper

from edgecascade.processes import Daemon, InProcessDaemon
from edgecascade.update_client import publish, rollout_status
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.delta.package import DeltaPackage
from shared.delta.signing import keygen, load_private_key
from shared.tensor_codec import to_proto
from tests.helpers.bundles import CONFIDENT, make_softmax_bundle

T = TypeVar("T")
#: A router or agent, in a child process or in this one.
AnyDaemon = Union[Daemon, InProcessDaemon]
#: An input the fragile model (below) fails on.
FRAGILE_INPUT = np.array([100.0, 0.0, 0.0], dtype=np.float32)


def make_keys(directory: Path, name: str = "update"):
    """(private key, public key path)."""
    private, public = keygen(directory / f"{name}.pem", directory / f"{name}.pub.pem")
    return load_private_key(private), public


def toy_versions(directory: Path, name: str, versions: Iterable[int] = (1, 2, 3)) -> dict[int, Path]:
    """Bundles of one toy model whose weights differ per version."""
    return {v: make_softmax_bundle(directory / f"{name}-v{v}", name=name, scale=1.0 + 0.5 * (v - 1), version=v)
            for v in versions}


def make_fragile_bundle(bundle_dir: Path, *, name: str, version: int) -> Path:
    """A toy model, except that it fails at run time on inputs above 50 (a Gather
    index out of range): it passes warm-up and golden checks, then errors on live traffic."""
    make_softmax_bundle(bundle_dir, name=name, scale=1.25, version=version)
    model = onnx.load(str(bundle_dir / "model.onnx"))
    g = model.graph
    g.initializer.extend([helper.make_tensor("limit", TensorProto.FLOAT, [], [50.0]),
                          helper.make_tensor("pad", TensorProto.FLOAT, [1], [0.0])])
    g.node[0].output[0] = "raw_logits"
    g.node.insert(1, helper.make_node("ReduceMax", ["input"], ["xmax"], keepdims=0))
    g.node.insert(2, helper.make_node("Greater", ["xmax", "limit"], ["too_big"]))
    g.node.insert(3, helper.make_node("Cast", ["too_big"], ["index"], to=TensorProto.INT64))
    g.node.insert(4, helper.make_node("Gather", ["pad", "index"], ["offset"]))
    g.node.insert(5, helper.make_node("Add", ["raw_logits", "offset"], ["logits"]))
    onnx.save(model, str(bundle_dir / "model.onnx"))
    return bundle_dir


def edge_settings(bundle: Path, router: AnyDaemon, state_dir: Path, public_key: Path, agent_id: str, **extra) -> dict:
    return {"bundle_dir": str(bundle), "cloud_target": router.target, "update_public_key": str(public_key),
            "state_dir": str(state_dir), "agent_id": agent_id, "update_poll_interval_s": 0.1,
            "update_health_window_s": 0.3, "update_health_requests": 1000, **extra}


def publish_package(router: AnyDaemon, package: DeltaPackage, canary_percent: float = 0.0) -> str:
    return publish(router.target, package, canary_percent=canary_percent).update_id


def served_version(agent: AnyDaemon, payload: np.ndarray = CONFIDENT) -> int:
    with grpc.insecure_channel(agent.target) as channel:
        response = pb_grpc.EdgeAgentStub(channel).Infer(pb.InferRequest(tensor=to_proto(payload)), timeout=5)
    return int(response.model_version)


def wait_for(check: Callable[[], Optional[T]], what: str, timeout_s: float = 20.0, logs: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()[-4000:]}")
        time.sleep(0.05)


def agent_record(router: AnyDaemon, agent_id: str) -> Optional[pb.AgentUpdateState]:
    return next((a for a in rollout_status(router.target).agents if a.agent_id == agent_id), None)


def wait_state(router: AnyDaemon, agent: AnyDaemon, agent_id: str, update_id: str, states: Iterable[str],
               timeout_s: float = 20.0) -> pb.AgentUpdateState:
    """Wait until the router says `agent_id` reached one of `states` for `update_id`."""
    wanted = set(states)

    def reached():
        record = agent_record(router, agent_id)
        return record if record and record.update_id == update_id and record.state in wanted else None

    return wait_for(reached, f"{agent_id} to report {sorted(wanted)} for {update_id}", timeout_s, agent.logs)


def wait_log(agent: AnyDaemon, text: str, timeout_s: float = 20.0) -> None:
    wait_for(lambda: text in agent.logs(), f"log line {text!r}", timeout_s, agent.logs)


def crash(agent: Daemon) -> None:
    """SIGKILL the agent and everything it started (its apply child too), like a power cut."""
    os.killpg(agent.process.pid, signal.SIGKILL)
    agent.process.wait()
