"""The agent's client certificate (and token) for its router are rotated without a restart: a
real router that requires mutual TLS (or a token) and a real agent that defers to it, with a
client that calls the agent all along. A good new certificate and key are taken (and the router
may then refuse the old one) without a request lost; a key that is not the certificate's is
refused with a warning and the previous files stay in use; a new token is sent once its file
changes."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from benchmarks.chaos_proxy import ChaosProxy
from edgecascade import dev_pki
from edgecascade.processes import InProcessDaemon
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.auth import add_token, revoke_tokens
from shared.sdk import Client
from shared.tls import ClientSecurity, open_channel
from tests.helpers.bundles import UNSURE, make_softmax_bundle
from tests.helpers.updates import make_keys

TIMEOUT_S = 10.0
#: How long the tests wait for what must happen within a few check intervals (1 s each).
WAIT_S = 30.0


def replace_file(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` the way a rotation should: a new file renamed over it."""
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


@pytest.fixture
def world(tmp_path):
    pki, client = tmp_path / "pki", tmp_path / "agent-client"
    dev_pki.init(pki)
    client.mkdir()
    for name in ("agent.pem", "agent.key"):
        shutil.copyfile(pki / name, client / name)
    router_client_ca = tmp_path / "router-client-ca.pem"  # the CAs the router takes client certificates from
    shutil.copyfile(pki / "ca.pem", router_client_ca)
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    _, update_public_key = make_keys(tmp_path)  # the agent then polls for updates over a link of its own
    router_settings = {"model_dirs": [str(cloud)], "tls_cert_file": str(pki / "router.pem"),
                       "tls_key_file": str(pki / "router.key"), "tls_client_ca_file": str(router_client_ca)}
    with InProcessDaemon("cloud", router_settings, tmp_path, name="router") as router, \
            closing_proxy(router.target) as proxy:
        agent_settings = {"bundle_dir": str(edge), "cloud_target": proxy.target, "agent_id": "rotating-agent",
                          "plaintext": True,  # the agent's own port, on loopback; its link to the router is mutual TLS
                          "cloud_tls_ca_file": str(pki / "ca.pem"), "cloud_tls_cert_file": str(client / "agent.pem"),
                          "cloud_tls_key_file": str(client / "agent.key"), "heartbeat_interval_s": 0.2,
                          "update_public_key": str(update_public_key), "state_dir": str(tmp_path / "state"),
                          "update_poll_interval_s": 0.2}
        with InProcessDaemon("edge", agent_settings, tmp_path, name="agent") as agent:
            yield {"router": router, "agent": agent, "proxy": proxy, "pki": pki, "client": client,
                   "router_client_ca": router_client_ca, "tmp": tmp_path}


@contextlib.contextmanager
def closing_proxy(upstream: str) -> Iterator[ChaosProxy]:
    proxy = ChaosProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


class CallingLoop:
    """Calls the agent with a deferred input, one call after another, in a thread; keeps every
    answer's route and every error."""

    def __init__(self, target: str) -> None:
        self.routes: list[str] = []
        self.errors: list[BaseException] = []
        self._target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calling-loop", daemon=True)

    def __enter__(self) -> "CallingLoop":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S * 2)
        assert not self._thread.is_alive(), "the calling loop did not end"

    def _run(self) -> None:
        with Client(self._target, timeout_s=TIMEOUT_S, security=None) as client:
            while not self._stop.is_set():
                try:
                    self.routes.append(client.infer(UNSURE).served_by)
                except Exception as exc:  # every failure is a lost request: kept for the assertion
                    self.errors.append(exc)

    def cloud_answers_after(self, start: int, count: int) -> None:
        """Wait until `count` cloud answers came after the first `start` answers."""
        deadline = time.monotonic() + WAIT_S
        while self.routes[start:].count("cloud") < count:
            assert not self.errors, self.errors[:3]
            assert time.monotonic() < deadline, f"no cloud answers after answer {start}: {self.routes[start:][-20:]}"
            time.sleep(0.05)


def wait_for_log(daemon: InProcessDaemon, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + WAIT_S
    while daemon.logs().count(text) < count:
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{daemon.logs()[-3000:]}"
        time.sleep(0.05)
    return daemon.logs()


def fleet_code(router: InProcessDaemon, security: ClientSecurity) -> grpc.StatusCode:
    """What the router answers a heartbeat-role call with these client files (a new connection)."""
    with open_channel(router.target, security) as channel:
        request = pb.HeartbeatRequest(status=pb.AgentStatus(agent_id="probe"), interval_s=1)
        try:
            pb_grpc.CloudRouterStub(channel).Heartbeat(request, timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


ROTATED = "client files changed, new calls use a channel built from them"


def test_a_new_client_certificate_from_a_new_ca_is_taken_without_losing_a_request(world):
    pki, client, router, agent = world["pki"], world["client"], world["router"], world["agent"]
    new_ca, staging = world["tmp"] / "new-ca", world["tmp"] / "staging"
    dev_pki.make_ca(new_ca, name="edgecascade dev CA 2")
    dev_pki.issue(new_ca, "agent", ("agent",), out_dir=staging)
    old_files = ClientSecurity(ca_file=pki / "ca.pem", cert_file=pki / "agent.pem", key_file=pki / "agent.key")
    # the router takes both CAs while the agents move over (README, "Rotating certificates and keys")
    (world["tmp"] / "both-cas.pem").write_bytes((pki / "ca.pem").read_bytes() + (new_ca / "ca.pem").read_bytes())
    replace_file(world["tmp"] / "both-cas.pem", world["router_client_ca"])

    with CallingLoop(agent.target) as calls:
        calls.cloud_answers_after(0, 5)
        replace_file(staging / "agent.pem", client / "agent.pem")
        replace_file(staging / "agent.key", client / "agent.key")
        cloud_target = world["proxy"].target
        wait_for_log(agent, f"cloud link to {cloud_target}: {ROTATED}")
        # now the router refuses the old certificate: only the new CA is left
        replace_file(new_ca / "ca.pem", world["router_client_ca"])
        deadline = time.monotonic() + WAIT_S
        while fleet_code(router, old_files) != grpc.StatusCode.UNAVAILABLE:
            assert time.monotonic() < deadline, "the router still takes the old certificate"
            time.sleep(0.1)
        # every connection from the agent is cut: to answer again, it must connect anew, and only
        # the new certificate gets through now (calls meanwhile are answered by the edge)
        world["proxy"].cut()
        world["proxy"].restore()
        calls.cloud_answers_after(len(calls.routes), 5)
    assert not calls.errors, calls.errors[:3]
    assert set(calls.routes) <= {"cloud", "edge_fallback"}, set(calls.routes)
    new_files = ClientSecurity(ca_file=pki / "ca.pem", cert_file=client / "agent.pem", key_file=client / "agent.key")
    assert fleet_code(router, new_files) == grpc.StatusCode.OK
    wait_for_log(agent, f"update link to {cloud_target}: {ROTATED}")  # the update link follows the files too


def test_a_key_that_is_not_the_certificates_is_refused_and_the_old_files_stay_in_use(world):
    client, agent, cloud_target = world["client"], world["agent"], world["proxy"].target
    staging = world["tmp"] / "staging"
    dev_pki.issue(world["pki"], "agent", ("agent",), out_dir=staging)
    dev_pki.issue(world["pki"], "other", ("agent",), out_dir=staging)

    with CallingLoop(agent.target) as calls:
        calls.cloud_answers_after(0, 5)
        replace_file(staging / "other.key", client / "agent.key")  # the key of another certificate
        logs = wait_for_log(agent, "changed client files refused")
        assert f"client key file {client / 'agent.key'}: not the key of the certificate in {client / 'agent.pem'}" \
            in logs
        assert ROTATED not in logs
        calls.cloud_answers_after(len(calls.routes), 5)  # the previous channel still answers
    assert not calls.errors, calls.errors[:3]
    assert set(calls.routes) <= {"cloud", "edge_fallback"}, set(calls.routes)
    warnings = [line for line in agent.logs().splitlines() if "cloud link" in line and "refused" in line]
    assert len(warnings) == 1, warnings  # one line while the files stay as they are

    # the operator puts the right pair in place: taken at the next check
    replace_file(staging / "agent.pem", client / "agent.pem")
    replace_file(staging / "agent.key", client / "agent.key")
    with CallingLoop(agent.target) as calls:
        wait_for_log(agent, f"cloud link to {cloud_target}: {ROTATED}")
        calls.cloud_answers_after(len(calls.routes), 5)
    assert not calls.errors, calls.errors[:3]


def test_a_new_token_in_the_token_file_is_sent_without_a_restart(tmp_path):
    pki = tmp_path / "pki"
    dev_pki.init(pki)
    router_tokens, agent_token = tmp_path / "router-tokens.yaml", tmp_path / "agent.token"
    old_token = add_token(router_tokens, "agent-old", ["agent"])
    agent_token.write_text(old_token + "\n")
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    router_settings = {"model_dirs": [str(cloud)], "tls_cert_file": str(pki / "router.pem"),
                       "tls_key_file": str(pki / "router.key"), "auth_tokens_file": str(router_tokens)}
    with InProcessDaemon("cloud", router_settings, tmp_path, name="router") as router:
        agent_settings = {"bundle_dir": str(edge), "cloud_target": router.target, "agent_id": "token-agent",
                          "plaintext": True, "cloud_tls_ca_file": str(pki / "ca.pem"),
                          "cloud_token_file": str(agent_token)}
        with InProcessDaemon("edge", agent_settings, tmp_path, name="agent") as agent, \
                CallingLoop(agent.target) as calls:
            calls.cloud_answers_after(0, 5)
            (tmp_path / "new.token").write_text(add_token(router_tokens, "agent-new", ["agent"]) + "\n")
            replace_file(tmp_path / "new.token", agent_token)
            wait_for_log(agent, f"cloud link to {router.target}: {ROTATED}")
            assert revoke_tokens(router_tokens, "agent-old") == 1
            deadline = time.monotonic() + WAIT_S
            while fleet_code(router, ClientSecurity(ca_file=pki / "ca.pem", token=old_token)) != \
                    grpc.StatusCode.UNAUTHENTICATED:
                assert time.monotonic() < deadline, "the router still takes the old token"
                time.sleep(0.1)
            calls.cloud_answers_after(len(calls.routes), 5)
    assert not calls.errors, calls.errors[:3]
    assert set(calls.routes) <= {"cloud", "edge_fallback"}, set(calls.routes)
