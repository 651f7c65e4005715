"""deploy/ stays true to the code: manifests parse, configs name real settings, commands exist."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib
import yaml

from cloud_router.settings import RouterSettings
from edge_agent.settings import EdgeSettings
from edgecascade.cli import build_parser
from shared.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
EDGE_EXAMPLE = DEPLOY / "systemd" / "edge.yaml.example"
UNIT = DEPLOY / "systemd" / "edgecascade-edge.service"
DOCKER = DEPLOY / "docker"


# --- helpers ---------------------------------------------------------------------------------

def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects() -> dict[tuple[str, str], dict]:
    """Every object in the kustomization's resources, keyed by (kind, name)."""
    objects = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def router_container(objects: dict) -> dict:
    (container,) = objects[("Deployment", "edgecascade-router")]["spec"]["template"]["spec"]["containers"]
    return container


def unit_entries(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path}: {line!r} before any [section]"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"cannot read a duration from {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def container_command(path: Path) -> list[str]:
    instructions = dict(dockerfile_instructions(path))  # the last ENTRYPOINT/CMD counts
    return json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions.get("CMD", "[]"))


def parse_cli(argv: list[str]):
    assert argv[0].endswith("edgecascade"), argv
    return build_parser().parse_args(argv[1:])


# --- every file parses and is listed -----------------------------------------------------------

@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")) + [EDGE_EXAMPLE], ids=lambda p: p.name)
def test_every_yaml_file_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} is empty"


def test_kustomization_lists_files_that_exist():
    kust = kustomization()
    listed = list(kust["resources"]) + [f for gen in kust.get("configMapGenerator", []) for f in gen["files"]]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    unlisted = {p.name for p in K8S.glob("*.yaml")} - set(listed) - {"kustomization.yaml"}
    assert not unlisted, f"files in deploy/k8s that kustomization.yaml does not use: {sorted(unlisted)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_and_mounts_the_generated_config():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (config_map,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert "cloud.yaml" in config_map["data"]
    (router,) = [doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "edgecascade-router"]
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]


# --- configs name only real settings ---------------------------------------------------------

def test_router_config_holds_only_router_settings():
    env = {e["name"]: e["value"] for e in router_container(k8s_objects())["env"]}
    # redis_url comes from the Deployment's env (update_state_in_redis needs it)
    settings = load_settings(RouterSettings, K8S / "cloud.yaml", redis_url=env["EDGECASCADE_ROUTER_REDIS_URL"])
    assert settings.model_dirs, "the router refuses to start without model_dirs"


def test_router_env_names_real_settings_that_the_yaml_does_not_shadow(monkeypatch):
    env = {e["name"]: e["value"] for e in router_container(k8s_objects())["env"]}
    router_env = {k: v for k, v in env.items() if k.startswith("EDGECASCADE_ROUTER_")}
    assert "EDGECASCADE_ROUTER_REDIS_URL" in router_env
    yaml_keys = set(yaml.safe_load((K8S / "cloud.yaml").read_text()))
    for name, value in router_env.items():
        field = name.removeprefix("EDGECASCADE_ROUTER_").lower()
        assert field in RouterSettings.model_fields, f"{name} names no RouterSettings field"
        assert field not in yaml_keys, f"cloud.yaml sets {field}, which would override {name}"
        monkeypatch.setenv(name, value)
    settings = load_settings(RouterSettings, K8S / "cloud.yaml")
    assert settings.redis_url == router_env["EDGECASCADE_ROUTER_REDIS_URL"]


def test_edge_example_holds_only_edge_settings():
    settings = load_settings(EdgeSettings, EDGE_EXAMPLE)
    assert settings.providers == ["cpu"]


# --- the router manifests agree with each other and with cloud.yaml --------------------------

def test_router_deployment_matches_its_config_and_neighbours():
    objects = k8s_objects()
    config = yaml.safe_load((K8S / "cloud.yaml").read_text())
    deployment = objects[("Deployment", "edgecascade-router")]
    pod = deployment["spec"]["template"]
    container = router_container(objects)
    port = int(config["listen"].rsplit(":", 1)[1])
    assert config["listen"].startswith("0.0.0.0:"), "a loopback listen address is unreachable in a pod"

    assert deployment["spec"]["replicas"] == 2
    assert [p["containerPort"] for p in container["ports"]] == [port]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert pod["spec"]["terminationGracePeriodSeconds"] > config["shutdown_grace_s"]
    assert "cpu" in container["resources"]["requests"], "the CPU autoscaler needs a CPU request"

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    args = parse_cli(["edgecascade", "cloud", "run", *container["args"]])
    assert args.cloud_command == "run" and Path(args.config) == Path(mounts["config"]) / "cloud.yaml"
    for model_dir in config["model_dirs"]:
        assert any(Path(model_dir).is_relative_to(path) for path in mounts.values()), f"{model_dir} is on no volume"
    # the replicas share update state through Redis (from the env), so none is kept on a volume
    assert config["update_state_in_redis"] is True and "update_store_dir" not in config

    service = objects[("Service", "edgecascade-router")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    hpa = objects[("HorizontalPodAutoscaler", "edgecascade-router")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edgecascade-router"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    redis_url = urlparse(next(e["value"] for e in container["env"] if e["name"] == "EDGECASCADE_ROUTER_REDIS_URL"))
    redis_service = objects[("Service", redis_url.hostname)]
    assert redis_url.port in [p["port"] for p in redis_service["spec"]["ports"]]
    redis_pod = objects[("Deployment", "edgecascade-redis")]["spec"]["template"]
    assert redis_service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()


# --- systemd ---------------------------------------------------------------------------------

def test_systemd_unit_runs_the_edge_agent_with_the_example_config():
    service = unit_entries(UNIT)["Service"]
    (exec_start,) = service["ExecStart"]
    args = parse_cli(shlex.split(exec_start))
    assert (args.command, args.edge_command) == ("edge", "run") and callable(args.func)
    assert args.config == "/etc/edgecascade/edge.yaml"

    example = load_settings(EdgeSettings, EDGE_EXAMPLE)
    assert service["User"] == ["edgecascade"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    assert seconds(service["TimeoutStopSec"][0]) > example.shutdown_grace_s
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    state_dir = Path("/var/lib") / service["StateDirectory"][0]
    writable = [Path(p) for value in service["ReadWritePaths"] for p in value.split()]
    assert example.bundle_dir.is_relative_to(state_dir), "updates must be able to write the bundle"
    assert any(example.bundle_dir.is_relative_to(p) for p in writable)


# --- Docker ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, subcommand", [("Dockerfile.cloud", "cloud"), ("Dockerfile.edge", "edge")])
def test_dockerfile_entrypoint_is_a_real_subcommand(name, subcommand):
    args = parse_cli(container_command(DOCKER / name))
    assert args.command == subcommand and getattr(args, f"{subcommand}_command") == "run" and args.config


def pip_installs(path: Path) -> list[str]:
    return [args for instruction, args in dockerfile_instructions(path)
            if instruction == "RUN" and re.search(r"\bpip install\b", args)]


def test_edge_image_is_arm64_and_installs_only_the_edge_extra():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.edge")
    for instruction, args in instructions:
        if instruction == "FROM":
            assert args.startswith("--platform=linux/arm64 python:3.11-slim"), args
    installs = pip_installs(DOCKER / "Dockerfile.edge")
    assert installs and all("[edge]" in line for line in installs)
    for line in installs:
        assert not re.search(r"torch|\[(cloud|dev)\]|whl/cpu", line), f"the edge image must not install: {line}"


def test_cloud_image_installs_the_cloud_extra_with_the_cpu_torch_index():
    installs = pip_installs(DOCKER / "Dockerfile.cloud")
    assert any("[cloud]" in line and "--extra-index-url" in line for line in installs)
    assert "https://download.pytorch.org/whl/cpu" in (DOCKER / "Dockerfile.cloud").read_text()


def test_edge_extra_pulls_no_torch():
    """What Dockerfile.edge relies on: edgecascade[edge], followed through self-references."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras, seen, requirements = ["edge"], set(), list(project["dependencies"])
    while extras:
        extra = extras.pop()
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            own = re.fullmatch(r"edgecascade\[([\w,\s-]+)\]", requirement)
            if own:
                extras += [e.strip() for e in own[1].split(",") if e.strip() not in seen]
            else:
                requirements.append(requirement)
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}
    assert not names & {"torch", "torchvision", "transformers", "sentence-transformers"}, names
