"""Transport security and authorisation against real daemons: a router that requires mutual TLS
and takes tokens, an agent that serves TLS, checks tokens and reaches the router with its own
client certificate. Every role is refused outside its rights; an unsigned or wrongly signed
update is refused even with admin credentials; no token ever reaches a log."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

from edgecascade import dev_pki
from edgecascade.processes import InProcessDaemon, free_port
from edgecascade.update_client import publish, rollout_status
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from protos import grpc_service_pb2 as kserve_pb
from protos import grpc_service_pb2_grpc as kserve_grpc
from shared.auth import add_token, revoke_tokens
from shared.delta.manifest import SignedManifest
from shared.delta.package import DeltaPackage
from shared.errors import EdgecascadeError, PermissionDeniedError, UnauthenticatedError
from shared.sdk import Client
from shared.tensor_codec import to_proto
from shared.tls import ClientSecurity, open_channel
from tests.helpers.bundles import CONFIDENT, UNSURE, make_softmax_bundle
from tests.helpers.updates import make_keys, toy_versions

TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    pki = tmp / "pki"
    dev_pki.init(pki)
    tokens = {}
    router_tokens, agent_tokens = tmp / "router-tokens.yaml", tmp / "agent-tokens.yaml"
    for role in ("infer", "agent", "admin"):
        tokens[f"router-{role}"] = add_token(router_tokens, f"router-{role}-holder", [role])
        tokens[f"agent-{role}"] = add_token(agent_tokens, f"agent-{role}-holder", [role])
    key, public = make_keys(tmp)
    other_key, _ = make_keys(tmp, "intruder")
    versions = toy_versions(tmp, "toy-edge", (1, 2))
    cloud = make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True)
    router_settings = {"model_dirs": [str(cloud)], "tls_cert_file": str(pki / "router.pem"),
                       "tls_key_file": str(pki / "router.key"), "tls_client_ca_file": str(pki / "ca.pem"),
                       "auth_tokens_file": str(router_tokens), "update_public_key": str(public),
                       "health_listen": f"127.0.0.1:{free_port()}"}
    with InProcessDaemon("cloud", router_settings, tmp, name="router") as router:
        agent_settings = {"bundle_dir": str(versions[1]), "cloud_target": router.target, "agent_id": "secure-agent",
                          "tls_cert_file": str(pki / "agent.pem"), "tls_key_file": str(pki / "agent.key"),
                          "auth_tokens_file": str(agent_tokens), "cloud_tls_ca_file": str(pki / "ca.pem"),
                          "cloud_tls_cert_file": str(pki / "agent.pem"), "cloud_tls_key_file": str(pki / "agent.key"),
                          "heartbeat_interval_s": 0.2}
        with InProcessDaemon("edge", agent_settings, tmp, name="agent") as agent:
            yield {"router": router, "agent": agent, "pki": pki, "tokens": tokens, "router_tokens": router_tokens,
                   "key": key, "other_key": other_key, "versions": versions, "tmp": tmp}


def cert(world, name: str, token: str | None = None) -> ClientSecurity:
    pki = world["pki"]
    return ClientSecurity(ca_file=pki / "ca.pem", cert_file=pki / f"{name}.pem", key_file=pki / f"{name}.key",
                          token=token)


def tls_token(world, token_name: str) -> ClientSecurity:
    return ClientSecurity(ca_file=world["pki"] / "ca.pem", token=world["tokens"][token_name])


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def router_calls(stub: pb_grpc.CloudRouterStub, kserve: kserve_grpc.GRPCInferenceServiceStub) -> dict:
    """One well-formed call of each router RPC whose rights the tests check."""
    infer = pb.InferRequest(tensor=to_proto(UNSURE), timeout_ms=5000)
    return {
        "Infer": lambda: stub.Infer(infer, timeout=TIMEOUT_S),
        "KServe": lambda: kserve.ServerLive(kserve_pb.ServerLiveRequest(), timeout=TIMEOUT_S),
        "Heartbeat": lambda: stub.Heartbeat(pb.HeartbeatRequest(status=pb.AgentStatus(agent_id="probe"), interval_s=1),
                                            timeout=TIMEOUT_S),
        "GetFleet": lambda: stub.GetFleet(pb.FleetRequest(), timeout=TIMEOUT_S),
        "GetRolloutStatus": lambda: stub.GetRolloutStatus(pb.RolloutStatusRequest(), timeout=TIMEOUT_S),
        "GetUpdateNotice": lambda: stub.GetUpdateNotice(
            pb.UpdateNoticeRequest(agent_id="probe", model_name="toy-edge", model_version=1), timeout=TIMEOUT_S),
        "PublishUpdate": lambda: stub.PublishUpdate(iter([pb.PublishUpdateRequest(signed_manifest=b"{}")]),
                                                    timeout=TIMEOUT_S),
    }


#: Which router RPCs each role may call (the rest must be PERMISSION_DENIED).
ROUTER_RIGHTS = {
    "infer": {"Infer", "KServe"},
    "agent": {"Infer", "Heartbeat", "GetUpdateNotice"},
    "admin": {"GetFleet", "GetRolloutStatus", "PublishUpdate"},
}
CERT_OF_ROLE = {"infer": "app", "agent": "agent", "admin": "admin"}


@pytest.mark.parametrize("credential", ["certificate", "token"])
@pytest.mark.parametrize("role", sorted(ROUTER_RIGHTS))
def test_each_role_on_the_router_is_refused_outside_its_rights(secure, role, credential):
    # mutual TLS is required at the router; with a token, a roleless server certificate carries it
    security = cert(secure, CERT_OF_ROLE[role]) if credential == "certificate" else \
        cert(secure, "router", secure["tokens"][f"router-{role}"])
    with open_channel(secure["router"].target, security) as channel:
        calls = router_calls(pb_grpc.CloudRouterStub(channel), kserve_grpc.GRPCInferenceServiceStub(channel))
        for name, call in calls.items():
            code = code_of(call)
            if name in ROUTER_RIGHTS[role]:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (role, name, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (role, name, code)


def test_router_refuses_callers_without_a_client_certificate(secure):
    target = secure["router"].target
    for security in (None, ClientSecurity(ca_file=secure["pki"] / "ca.pem"),  # plaintext; TLS without a certificate
                     tls_token(secure, "router-admin")):
        with open_channel(target, security) as channel:
            code = code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE, security


def test_plaintext_health_port_answers_health_and_nothing_else(secure):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = secure["router"].settings["health_listen"]
    with open_channel(target, None) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=5)) == \
            grpc.StatusCode.UNIMPLEMENTED


def test_certificate_from_another_ca_is_refused(secure, tmp_path):
    dev_pki.init(tmp_path / "other")
    other = ClientSecurity(ca_file=secure["pki"] / "ca.pem", cert_file=tmp_path / "other" / "admin.pem",
                           key_file=tmp_path / "other" / "admin.key")
    with open_channel(secure["router"].target, other) as channel:
        assert code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=3)) == \
            grpc.StatusCode.UNAVAILABLE


def test_certificate_without_a_role_is_unauthenticated(secure):
    with open_channel(secure["router"].target, cert(secure, "router")) as channel:
        assert code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=5)) == \
            grpc.StatusCode.UNAUTHENTICATED


def test_agent_serves_tls_with_tokens_and_defers_over_mutual_tls(secure):
    target = secure["agent"].target
    with Client(target, timeout_s=TIMEOUT_S, security=tls_token(secure, "agent-infer")) as client:
        assert client.infer(CONFIDENT).served_by == "edge"
        deferred = client.infer(UNSURE)
        assert deferred.served_by == "cloud", deferred  # the agent's client certificate got it through
    with Client(target, timeout_s=TIMEOUT_S, security=ClientSecurity(ca_file=secure["pki"] / "ca.pem")) as client:
        with pytest.raises(UnauthenticatedError, match="no credentials"):
            client.infer(CONFIDENT)
    wrong = ClientSecurity(ca_file=secure["pki"] / "ca.pem", token="ect_not-a-real-token")
    with Client(target, timeout_s=TIMEOUT_S, security=wrong) as client:
        with pytest.raises(UnauthenticatedError, match="unknown or revoked"):
            client.infer(CONFIDENT)
    for role in ("agent", "admin"):
        with Client(target, timeout_s=TIMEOUT_S, security=tls_token(secure, f"agent-{role}")) as client:
            with pytest.raises(PermissionDeniedError, match="needs one of: infer"):
                client.infer(CONFIDENT)
    with Client(target, timeout_s=TIMEOUT_S, security=tls_token(secure, "agent-admin")) as client:
        assert client.status().agent_id == "secure-agent"  # admin reads status
    with Client(target, timeout_s=3, security=None) as client:  # plaintext to a TLS port: no connection
        with pytest.raises(EdgecascadeError):
            client.infer(CONFIDENT)


def test_agent_heartbeats_reach_the_router_as_an_agent(secure):
    with open_channel(secure["router"].target, cert(secure, "admin")) as channel:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fleet = pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=5)
            if any(a.agent.agent_id == "secure-agent" for a in fleet.agents):
                return
            time.sleep(0.1)
    pytest.fail("the agent's heartbeats never reached the fleet registry")


def test_unsigned_or_wrongly_signed_update_is_refused_even_for_admin(secure):
    versions = secure["versions"]
    good = package_from_bundles(versions[2], versions[1], secure["key"])
    wrong_key = package_from_bundles(versions[2], versions[1], secure["other_key"])
    unsigned = DeltaPackage(SignedManifest(SignedManifest.from_bytes(good.signed_manifest).manifest_bytes, b"").to_bytes(),
                            good.payload)
    target = secure["router"].target
    for security in (cert(secure, "admin"), cert(secure, "router", secure["tokens"]["router-admin"])):
        for package in (wrong_key, unsigned):
            with pytest.raises(EdgecascadeError, match="signature") as refused:
                publish(target, package, security=security, timeout_s=TIMEOUT_S)
            assert not isinstance(refused.value, (UnauthenticatedError, PermissionDeniedError))
    assert not rollout_status(target, security=cert(secure, "admin")).rollouts


def test_tokens_are_added_and_revoked_without_a_restart(secure):
    router, path = secure["router"], secure["router_tokens"]
    token = add_token(path, "late-operator", ["admin"])
    security = cert(secure, "router", token)

    def fleet_code() -> grpc.StatusCode:
        with open_channel(router.target, security) as channel:
            return code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=5))

    def eventually(code: grpc.StatusCode) -> None:
        deadline = time.monotonic() + 15
        while fleet_code() != code:
            assert time.monotonic() < deadline, f"never {code}"
            time.sleep(0.2)

    eventually(grpc.StatusCode.OK)
    assert revoke_tokens(path, "late-operator") == 1
    eventually(grpc.StatusCode.UNAUTHENTICATED)


def test_no_log_line_carries_a_token(secure):
    """Valid, wrong and wrongly-roled tokens were all sent above (this module runs in order)."""
    bogus = "ect_not-a-real-token"
    with Client(secure["agent"].target, timeout_s=5,
                security=ClientSecurity(ca_file=secure["pki"] / "ca.pem", token=bogus)) as client:
        with pytest.raises(UnauthenticatedError):
            client.infer(CONFIDENT)
    logs = secure["router"].logs() + secure["agent"].logs()
    assert "refused" in logs  # the refusals are logged ...
    for token in [*secure["tokens"].values(), bogus]:
        assert token not in logs  # ... without the token
        assert token.split("_", 1)[1][:12] not in logs


def test_cli_reads_fleet_and_rollouts_with_tls_options(secure):
    pki, target = secure["pki"], secure["router"].target
    base = [sys.executable, "-m", "edgecascade.cli"]
    tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "admin.pem"), "--tls-key", str(pki / "admin.key")]
    ok = subprocess.run(base + ["fleet", "status", "--router", target, "--json", *tls], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    ok = subprocess.run(base + ["update", "status", "--router", target, *tls], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    app = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "app.pem"), "--tls-key", str(pki / "app.key")]
    denied = subprocess.run(base + ["update", "status", "--router", target, *app], capture_output=True, text=True,
                            timeout=60)
    assert denied.returncode == 2 and "may not call GetRolloutStatus" in denied.stderr, denied.stderr


def test_daemon_without_tls_or_plaintext_does_not_start(tmp_path):
    bundle = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=1.0)
    config = tmp_path / "cloud.yaml"
    config.write_text(f"model_dirs: [{bundle}]\nlisten: 127.0.0.1:0\n")
    run = subprocess.run([sys.executable, "-m", "edgecascade.cli", "cloud", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "no TLS configured" in run.stderr and "plaintext: true" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_rotated_server_certificate_is_used_without_a_restart(secure):
    import socket
    import ssl

    from cryptography import x509

    pki, router = secure["pki"], secure["router"]

    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / "admin.pem"), str(pki / "admin.key"))
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    before = served_serial()
    issued = dev_pki.issue(pki, "router", ())
    after = x509.load_pem_x509_certificate(issued.cert_file.read_bytes()).serial_number
    assert before != after
    deadline = time.monotonic() + 10
    while served_serial() != after:
        assert time.monotonic() < deadline, "the router kept the old certificate"
        time.sleep(0.1)
    with open_channel(router.target, cert(secure, "admin")) as channel:
        assert code_of(lambda: pb_grpc.CloudRouterStub(channel).GetFleet(pb.FleetRequest(), timeout=5)) == \
            grpc.StatusCode.OK
