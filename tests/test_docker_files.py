"""The cluster side: the image installs the way CI does, and every config parses."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def test_every_cluster_config_is_valid_yaml_with_the_expected_shape():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"head", "worker"} <= set(compose["services"])
    launcher = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    rayjob = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert rayjob["kind"] == "RayJob"
    assert rayjob["spec"]["entrypoint"].startswith("compscale submit sweeps/")


def test_the_image_installs_with_the_same_script_ci_runs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^RUN scripts/setup\.sh$", dockerfile, re.MULTILINE)
    assert "scripts/setup.sh" in ci
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE), "image must not run as root"
    assert "HEALTHCHECK" in dockerfile


def test_the_image_copies_every_package_and_sweep_it_runs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for path in ("compscale", "workers", "orchestrator", "sweeps", "scripts", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path
