"""Certificate revocation against real daemons over mutual TLS: `edgecascade certs revoke` puts a
certificate on the CA's CRL, and a router and an agent with `tls_crl_file` refuse it on the next
call without a restart, while other certificates keep working; an agent whose own cloud
certificate is revoked answers from the edge; a CRL signed by another CA is refused at start and
ignored on reload. The tests in this module run in order and share the daemons."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from edgecascade import dev_pki
from edgecascade.cli import main
from edgecascade.processes import InProcessDaemon, free_port
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.crl import load_crl
from shared.errors import ERROR_CLASS_KEY, ConfigError, UnauthenticatedError
from shared.sdk import Client
from shared.tensor_codec import to_proto
from shared.tls import ClientSecurity, open_channel
from tests.helpers.bundles import CONFIDENT, UNSURE, make_softmax_bundle

TIMEOUT_S = 10.0
#: How long a test waits for a daemon to see a changed CRL (it looks once a second).
RELOAD_WAIT_S = 20.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crl")
    pki = tmp / "pki"
    dev_pki.init(pki)
    for name, roles in (("app-a", ["infer"]), ("app-b", ["infer"]), ("edge-link", ["agent"])):
        dev_pki.issue(pki, name, roles)
    cloud = make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True)
    edge = make_softmax_bundle(tmp / "edge", name="toy-edge", scale=1.0)
    mutual_tls = {"tls_client_ca_file": str(pki / "ca.pem"), "tls_crl_file": str(pki / "crl.pem")}
    router_settings = {"model_dirs": [str(cloud)], "tls_cert_file": str(pki / "router.pem"),
                       "tls_key_file": str(pki / "router.key"), **mutual_tls,
                       "health_listen": f"127.0.0.1:{free_port()}"}
    with InProcessDaemon("cloud", router_settings, tmp, name="router") as router:
        agent_settings = {"bundle_dir": str(edge), "cloud_target": router.target, "agent_id": "crl-agent",
                          "tls_cert_file": str(pki / "agent.pem"), "tls_key_file": str(pki / "agent.key"), **mutual_tls,
                          "cloud_tls_ca_file": str(pki / "ca.pem"), "cloud_tls_cert_file": str(pki / "edge-link.pem"),
                          "cloud_tls_key_file": str(pki / "edge-link.key"), "heartbeat_interval_s": 0.2}
        with InProcessDaemon("edge", agent_settings, tmp, name="agent") as agent:
            yield {"router": router, "agent": agent, "pki": pki, "tmp": tmp, "router_settings": router_settings}


def cert(world, name: str) -> ClientSecurity:
    pki = world["pki"]
    return ClientSecurity(ca_file=pki / "ca.pem", cert_file=pki / f"{name}.pem", key_file=pki / f"{name}.key")


def serial_of(world, name: str) -> int:
    return x509.load_pem_x509_certificate((world["pki"] / f"{name}.pem").read_bytes()).serial_number


def router_infer(world, name: str) -> grpc.RpcError | pb.InferResponse:
    """One router Infer with certificate `name`, on a new connection: the answer or the error."""
    with open_channel(world["router"].target, cert(world, name)) as channel:
        try:
            return pb_grpc.CloudRouterStub(channel).Infer(pb.InferRequest(tensor=to_proto(UNSURE), timeout_ms=5000),
                                                          timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc


def revoke_cli(world, *selector: str) -> int:
    return main(["certs", "revoke", "--ca-dir", str(world["pki"]), *selector])


def eventually(predicate, what: str) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.1)


def test_revoked_certificate_is_refused_without_a_restart_and_others_keep_working(world):
    assert isinstance(router_infer(world, "app-a"), pb.InferResponse)
    with Client(world["agent"].target, timeout_s=TIMEOUT_S, security=cert(world, "app-a")) as client:
        assert client.infer(CONFIDENT).served_by == "edge"

    assert revoke_cli(world, "--name", "app-a") == 0
    eventually(lambda: isinstance(router_infer(world, "app-a"), grpc.RpcError), "the router refusing app-a")

    refused = router_infer(world, "app-a")
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"certificate serial {serial_of(world, 'app-a'):x} (app-a) was revoked" in refused.details()
    assert (ERROR_CLASS_KEY, UnauthenticatedError.__name__) in tuple(refused.trailing_metadata() or ())
    assert isinstance(router_infer(world, "app-b"), pb.InferResponse)

    with Client(world["agent"].target, timeout_s=TIMEOUT_S, security=cert(world, "app-a")) as client:
        eventually(lambda: _refused_by_agent(client), "the agent refusing app-a")
        with pytest.raises(UnauthenticatedError, match=r"certificate serial [0-9a-f]+ \(app-a\) was revoked"):
            client.infer(CONFIDENT)
    with Client(world["agent"].target, timeout_s=TIMEOUT_S, security=cert(world, "app-b")) as client:
        assert client.infer(CONFIDENT).served_by == "edge"
    assert "was revoked" in world["router"].logs()  # the refusal is logged


def _refused_by_agent(client: Client) -> bool:
    try:
        client.infer(CONFIDENT)
    except UnauthenticatedError:
        return True
    return False


def test_plaintext_health_port_is_not_affected(world):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(world["router_settings"]["health_listen"], None) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_revoking_again_changes_nothing(world, capsys):
    crl = world["pki"] / "crl.pem"
    before = crl.read_bytes()
    assert revoke_cli(world, "--name", "app-a") == 0
    assert revoke_cli(world, "--serial", f"{serial_of(world, 'app-a'):x}") == 0
    assert crl.read_bytes() == before
    assert "already on" in capsys.readouterr().out


@pytest.mark.parametrize("selector, problem", [
    (("--name", "nobody"), "no certificate named 'nobody'"),
    (("--serial", "abc123"), "no certificate with serial abc123"),
    (("--serial", "not-hex"), "expected hexadecimal digits"),
    (("--name", "ca"), "the CA certificate itself"),
])
def test_unknown_certificate_is_one_line_error(world, capsys, selector, problem):
    crl = world["pki"] / "crl.pem"
    before = crl.read_bytes()
    assert revoke_cli(world, *selector) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err and "Traceback" not in err, err
    assert crl.read_bytes() == before


def test_crl_days_default_is_the_one_help_names(capsys):
    for action in ("revoke", "crl"):
        with pytest.raises(SystemExit):
            main(["certs", action, "--help"])
        assert f"(default {dev_pki.CRL_DAYS})" in " ".join(capsys.readouterr().out.split())


def test_certificate_of_another_ca_cannot_be_revoked(world, capsys, tmp_path):
    dev_pki.init(tmp_path / "other")
    assert revoke_cli(world, "--cert", str(tmp_path / "other" / "app.pem")) == 2
    assert "was not issued by the CA" in capsys.readouterr().err


def test_agent_whose_cloud_certificate_is_revoked_answers_from_the_edge(world):
    with Client(world["agent"].target, timeout_s=TIMEOUT_S, security=cert(world, "app-b")) as client:
        assert client.infer(UNSURE).served_by == "cloud"
        assert revoke_cli(world, "--name", "edge-link") == 0
        answers = []

        def fell_back() -> bool:
            answers.append(client.infer(UNSURE))  # every request gets an answer, before and after the reload
            return answers[-1].served_by == "edge_fallback"

        eventually(fell_back, "the agent falling back once its cloud certificate is revoked")
        assert {a.served_by for a in answers} <= {"cloud", "edge_fallback"}
        assert answers[-1].fallback_reason == "cloud_error_unauthenticated", answers[-1]
        more = [client.infer(UNSURE) for _ in range(10)]
        assert all(a.served_by == "edge_fallback" for a in more), [a.served_by for a in more]
        assert client.infer(CONFIDENT).served_by == "edge"
        assert client.status().agent_id == "crl-agent"  # still serving after refused heartbeats
    eventually(lambda: "(edge-link) was revoked" in world["agent"].logs(),  # its operator sees why
               "the agent logging why its heartbeats fail")


def test_crl_signed_by_another_ca_is_refused_at_start_and_ignored_on_reload(world, tmp_path):
    other = tmp_path / "other"
    dev_pki.init(other)  # its crl.pem is empty: accepted, it would let app-a back in
    bad = {**world["router_settings"], "tls_crl_file": str(other / "crl.pem"), "health_listen": None}
    with pytest.raises(ConfigError, match="setting 'tls_crl_file'.*not signed by a CA in tls_client_ca_file"):
        InProcessDaemon("cloud", bad, tmp_path, name="bad-router").start()

    crl, router = world["pki"] / "crl.pem", world["router"]
    good = tmp_path / "good-crl.pem"
    shutil.copyfile(crl, good)
    staged = crl.with_name("crl.pem.staged")
    shutil.copyfile(other / "crl.pem", staged)
    os.replace(staged, crl)
    try:
        eventually(lambda: isinstance(router_infer(world, "app-b"), pb.InferResponse)
                   and "CRL changed but cannot be used" in router.logs(), "the router ignoring the tampered CRL")
        refused = router_infer(world, "app-a")
        assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not signed by a CA" in router.logs()
    finally:
        shutil.copyfile(good, staged)
        os.replace(staged, crl)


def test_crl_without_client_ca_or_expired_is_a_config_error(world, tmp_path):
    plain = {key: value for key, value in world["router_settings"].items() if key != "tls_client_ca_file"}
    plain["health_listen"] = None
    with pytest.raises(ConfigError, match="'tls_crl_file' needs tls_client_ca_file"):
        InProcessDaemon("cloud", plain, tmp_path, name="no-ca-router").start()
    pki = world["pki"]
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=dev_pki.CRL_DAYS + 1)
    with pytest.raises(ConfigError, match="setting 'tls_crl_file'.*expired at"):
        load_crl(pki / "crl.pem", pki / "ca.pem", now=later)
    assert serial_of(world, "app-a") in load_crl(pki / "crl.pem", pki / "ca.pem").serials
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="setting 'tls_crl_file'.*cannot read"):
        load_crl(missing, pki / "ca.pem")
    assert not Path(missing).exists()
