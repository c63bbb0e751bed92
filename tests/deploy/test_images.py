"""The cluster image and the GPU work-pool examples, checked without Docker or Kubernetes (neither runs here).

The Dockerfile is parsed and held to its rules; the job templates go through Prefect's own base job
template validation, and, where prefect-docker and prefect-kubernetes are installed, through their
workers' job configurations as a worker would build them for a flow run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TEMPLATES = {"docker": DEPLOY / "docker" / "base-job-template.json",
             "kubernetes": DEPLOY / "kubernetes" / "base-job-template.json"}
POOL_TYPES = {"gpu-docker": "docker", "gpu-k8s": "kubernetes"}  # deploy/prefect.yaml's pools


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def env_of() -> dict[str, str]:
    env = {}
    for args in args_of("ENV"):
        env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def template(kind: str) -> dict:
    return json.loads(TEMPLATES[kind].read_text())


# --- Dockerfile ----------------------------------------------------------------------------------
def test_base_image_is_a_cuda_runtime_pinned_by_tag():
    (base,) = args_of("FROM")
    image, _, tag = base.partition(":")
    assert image == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", tag), tag
    assert "latest" not in (REPO / "Dockerfile").read_text()


def test_base_image_cuda_matches_the_pinned_torch_build():
    torch = pytest.importorskip("torch")
    if not torch.version.cuda:
        pytest.skip("this torch is a CPU build: nothing to compare")
    cuda = re.match(r"(\d+\.\d+)", args_of("FROM")[0].partition(":")[2]).group(1)
    pinned = {Requirement(line).name: str(Requirement(line).specifier) for line in constraint_lines()}
    if pinned["torch"] != f"=={torch.__version__.split('+')[0]}":
        pytest.skip(f"torch {torch.__version__} here, the image pins {pinned['torch']}: another build to compare")
    assert torch.version.cuda.startswith(cuda), f"torch built for CUDA {torch.version.cuda}, image has {cuda}"


def test_runs_as_a_user_that_is_not_root():
    instructions = dockerfile()
    users = [i for i, (kw, _) in enumerate(instructions) if kw == "USER"]
    assert users, "no USER: the container would run as root"
    user = instructions[users[-1]][1]
    assert user not in ("root", "0") and not user.startswith("0:")
    assert all(kw != "RUN" for kw, _ in instructions[users[-1]:]), "a RUN after USER would run as that user by accident"
    created = " ".join(args_of("RUN"))
    uid = re.search(rf"useradd[^&]*--uid (\d+)[^&]* {user}\b", created)
    assert uid, f"user {user} is not created with a fixed uid"
    # The Kubernetes template runs the pod as the same uid, so the cache claim is writable (fsGroup).
    security = template("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == int(uid.group(1)) == security["fsGroup"]


def test_model_cache_is_a_volume_where_the_package_caches():
    from anima_lora_flow.config import cache_root

    env = env_of()
    volumes = [v for args in args_of("VOLUME") for v in json.loads(args)]
    cache = env["ANIMA_LORA_CACHE"]
    assert cache in volumes
    assert env["HF_HOME"].startswith(cache + "/") and env["PREFECT_HOME"].startswith(cache + "/")
    saved = os.environ.get("ANIMA_LORA_CACHE")
    os.environ["ANIMA_LORA_CACHE"] = cache
    try:
        assert cache_root() == Path(cache)  # downloads, models and sd-scripts go under the volume
    finally:
        if saved is None:
            del os.environ["ANIMA_LORA_CACHE"]
        else:
            os.environ["ANIMA_LORA_CACHE"] = saved
    # The volume is declared after its folder is made and handed to the user: Docker keeps neither otherwise.
    kinds = [kw for kw, _ in dockerfile()]
    chown = max(i for i, (kw, args) in enumerate(dockerfile()) if kw == "RUN" and "chown" in args and cache in args)
    assert chown < kinds.index("VOLUME")


def test_installs_the_package_with_pinned_versions():
    installs = [args for args in args_of("RUN") if "pip install" in args]
    assert installs and all("--constraint deploy/constraints.txt" in args for args in installs)
    assert any(re.search(r"pip install --constraint \S+ \.(\s|$)", args) for args in installs), "the package itself"


def constraint_lines() -> list[str]:
    text = (DEPLOY / "constraints.txt").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_constraints_pin_every_dependency_within_pyproject():
    pins = {}
    for line in constraint_lines():
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower().replace("_", "-")] = spec.version
    for dependency in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dependency)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_build_context_keeps_what_the_install_needs():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for kw, args in dockerfile():
        if kw == "COPY":
            source = shlex.split(args)[0]
            assert source == "." or (REPO / source).exists(), source
    for needed in ("pyproject.toml", "README.md", "cli.py", "flows/train_lora.py", "deploy/constraints.txt",
                   "deploy/docker/entrypoint.sh"):
        assert (REPO / needed).exists()
        parts = Path(needed).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        assert not any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in ignored), needed
    assert "tests" in ignored and ".git" in ignored


def test_entrypoint_is_the_cli_and_lets_a_worker_run_prefect():
    (entrypoint,) = args_of("ENTRYPOINT")
    assert json.loads(entrypoint)[-1] == "/usr/local/bin/anima-lora-entrypoint"
    script = DEPLOY / "docker" / "entrypoint.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cli = subprocess.run(["sh", str(script), "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0 and cli.stdout.startswith("anima-lora "), cli.stderr
    # What a Docker or Kubernetes worker runs in the container (prefect flow-run execute) passes through.
    prefect = subprocess.run(["sh", str(script), "prefect", "--version"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert prefect.returncode == 0 and re.match(r"\d+\.\d+\.\d+", prefect.stdout.strip()), prefect.stderr


# --- work-pool job templates -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_job_templates_pass_prefects_work_pool_validation(kind):
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name=f"gpu-{kind}", type=kind, base_job_template=template(kind))  # what the API checks
    assert pool.base_job_template == template(kind)


def test_docker_template_requests_nvidia_gpus_and_the_cache_volume():
    variables = template("docker")["variables"]["properties"]
    (request,) = variables["container_create_kwargs"]["default"]["device_requests"]
    assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]]
    assert request.get("count") == -1 or request.get("device_ids")
    assert any(v.endswith(":/cache") for v in variables["volumes"]["default"])
    assert template("docker")["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"


def test_kubernetes_template_requests_nvidia_gpus_and_the_cache_claim():
    kubernetes = template("kubernetes")
    pod = kubernetes["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    gpu_count = kubernetes["variables"]["properties"]["gpu_count"]
    assert gpu_count["type"] == "integer" and gpu_count["default"] >= 1 and gpu_count["minimum"] >= 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (cache_volume,) = [name for name, path in mounts.items() if path == "/cache"]
    assert claims[cache_volume] == "{{ model_cache_claim }}"
    pvc = yaml.safe_load((DEPLOY / "kubernetes" / "model-cache-pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == kubernetes["variables"]["properties"]["model_cache_claim"]["default"]


def test_docker_worker_builds_a_gpu_container_from_the_template(prefect_harness):
    pytest.importorskip("prefect_docker")
    import asyncio

    import docker.types
    from prefect.client.schemas.objects import FlowRun
    from prefect_docker.worker import DockerWorkerJobConfiguration

    configuration = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template("docker"), {}))
    configuration.prepare_for_flow_run(FlowRun(flow_id="00000000-0000-0000-0000-000000000000", name="gpu-run"))
    assert configuration.image == "anima-lora-flow:0.1.0" and configuration.command == "prefect flow-run execute"
    kwargs = configuration.container_create_kwargs
    # docker-py turns these into the API's DeviceRequests, as `docker run --gpus all` sends them.
    host = docker.types.HostConfig(version="1.44", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"])
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                       "Options": {}}]


def test_kubernetes_worker_builds_a_gpu_job_from_the_template(prefect_harness):
    pytest.importorskip("prefect_kubernetes")
    import asyncio

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        template("kubernetes"), {"gpu_count": 2}))
    configuration.prepare_for_flow_run(FlowRun(flow_id="00000000-0000-0000-0000-000000000000", name="gpu-run"))
    (container,) = configuration.job_manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert container["args"] == ["prefect", "flow-run", "execute"]  # through the entrypoint, as given
    volumes = configuration.job_manifest["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "anima-lora-cache"}} in volumes


# --- deploy/prefect.yaml ----------------------------------------------------------------------------
def test_deployments_load_the_installed_flow_and_fit_their_pools():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.schema_tools import validate

    project = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    assert project["pull"] == []  # the image holds the flow; nothing is fetched from a checkout
    assert {d["work_pool"]["name"] for d in project["deployments"]} == set(POOL_TYPES)
    for deployment in project["deployments"]:
        assert not deployment["entrypoint"].endswith(".py") and ".py:" not in deployment["entrypoint"]
        flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert flow.name == "train-anima-lora"
        variables = template(POOL_TYPES[deployment["work_pool"]["name"]])["variables"]
        validate(deployment["work_pool"]["job_variables"], variables, raise_on_error=True, ignore_required=True)
