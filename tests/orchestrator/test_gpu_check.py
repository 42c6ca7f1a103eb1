"""The GPU check (benchmarks/gpu_check.sh) is one call on a machine lent for minutes: the script
must parse, name files that exist, and submit a cut of gpu-mini that validates, before it runs."""

import re
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, compscale

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_the_gpu_scripts_parse(script):
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], check=True)


def test_every_file_the_gpu_check_runs_exists():
    text = SCRIPT.read_text()
    paths = set(re.findall(r"\b((?:benchmarks|tests/\w+)/[\w.]+\.(?:py|sh))\b", text))
    assert {"benchmarks/gpu_check.py", "tests/compscale/test_formats.py"} <= paths
    for path in paths:
        assert (REPO / path).is_file(), path
    assert "docker/RAY_VERSION" in text and (REPO / "docker" / "RAY_VERSION").is_file()


@pytest.mark.slow  # over a few seconds
@pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu-rehearsal"])
def test_the_cut_of_gpu_mini_validates_and_keeps_its_gpu_packing(tmp_path, cpu):
    cut = tmp_path / "cut.yaml"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "cut", str(cut)]
    subprocess.run([*command, *(["--cpu"] if cpu else [])], check=True, cwd=REPO)
    validated = compscale("validate", str(cut), cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    spec = yaml.safe_load(cut.read_text())
    mini = yaml.safe_load((REPO / "sweeps" / "gpu-mini.yaml").read_text())
    expected_cells = 6 if cpu else 40
    assert f"{expected_cells} cells" in validated.stdout
    assert set(spec["formats"]) <= set(mini["formats"])
    if not cpu:  # what the GPU must prove: every format, 8 cells a GPU, bf16, ladders
        assert spec["formats"] == mini["formats"]
        assert spec["resources"] == mini["resources"] == {"cpus": 1, "gpus": 0.125}
        assert spec["train"]["precision"] == "bf16" and spec["train"]["schedule"] == "wsd"
        assert len(spec["tokens"]) > 1
