"""The cluster side: the image installs the way CI does, every config parses and validates against
its tool's own schema where one ships here, and Ray's version is written in one place."""

import fnmatch
import json
import re
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
RAY_VERSION = (DOCKER / "RAY_VERSION").read_text().strip()


def rayjob_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DOCKER / "rayjob.yaml").read_text())}


def test_every_cluster_config_is_valid_yaml_with_the_expected_shape():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"head", "worker-0", "worker-1", "driver"} <= set(compose["services"])
    launcher = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    rayjob = rayjob_documents()["RayJob"]
    assert rayjob["spec"]["entrypoint"].startswith("compscale submit sweeps/")


def test_the_image_installs_with_the_same_script_ci_runs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^ && PIP_CONSTRAINT=\S+ scripts/setup\.sh \\$", dockerfile, re.MULTILINE)
    assert "scripts/setup.sh" in ci
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE), "image must not run as root"
    assert "HEALTHCHECK" in dockerfile


def test_the_image_copies_every_package_and_sweep_it_runs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for path in ("compscale", "workers", "orchestrator", "sweeps", "scripts", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path


def test_ray_is_pinned_once_and_every_cluster_file_follows_it():
    assert ray.__version__ == RAY_VERSION, "the tested Ray is the one the image pins"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'echo "ray==$(cat docker/RAY_VERSION)"' in dockerfile
    assert "2." not in re.sub(r"(?m)^#.*$", "", dockerfile.replace("python:3.11", ""))
    assert rayjob_documents()["RayJob"]["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    images = re.findall(r"(?m)^ *image: *(\S+)", "\n".join(
        (DOCKER / name).read_text() for name in ("compose.yaml", "ray-cluster.yaml", "rayjob.yaml")
    ))  # fmt: skip
    assert len(images) == 4, images
    for image in images:
        assert image.rstrip("}").endswith(f"compscale:ray{RAY_VERSION}"), image


def test_compose_gives_the_driver_the_head_and_each_worker_its_own_gpu():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert services["driver"]["environment"]["RAY_ADDRESS"] == "head:6379"
    assert services["driver"]["environment"]["COMPSCALE_STORE"]
    workers = [name for name in services if name.startswith("worker")]
    devices = []
    for name in workers:
        (reservation,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in reservation, "count: all would give every worker every GPU"
        devices += reservation["device_ids"]
        assert "--num-gpus=1" in services[name]["command"]
    assert len(workers) == 2 and sorted(devices) == ["0", "1"]


def test_the_launcher_config_validates_against_rays_own_schema():
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    workers = config["available_node_types"]["gpu_8x"]["node_config"]
    assert workers["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


def test_the_rayjob_has_the_kuberay_fields_and_a_service_account_for_the_store():
    documents = rayjob_documents()
    job = documents["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    assert {"entrypoint", "rayClusterSpec"} <= set(job["spec"])
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert all("rayStartParams" in group and group["template"]["spec"] for group in groups)
    assert all(group["groupName"] for group in cluster["workerGroupSpecs"])
    account = documents["ServiceAccount"]
    assert account["apiVersion"] == "v1"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:")
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        for container in pod["containers"]:
            assert container["name"] and container["image"]
            assert {"name": "AWS_REGION", "value": "us-east-1"} in container["env"]


def test_rayignore_keeps_the_working_dir_upload_to_code_and_sweeps():
    patterns = [
        line.strip()
        for line in (ROOT / ".rayignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".git", ".venv/", "store/", "docs/", "runs/"):
        assert path in patterns, path
    for kept in ("orchestrator", "workers", "compscale", "sweeps", "pyproject.toml"):
        assert not any(fnmatch.fnmatch(kept, p.rstrip("/")) for p in patterns), kept
