"""deploy/kserve/inferenceservice.yaml is an InferenceService that KServe's own API models (its Python SDK, in
.venv-kserve) read back unchanged, and runs the image as deploy/kubernetes/deployment-cpu.yaml does."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REQUIRE_TOOLS, ROOT

MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
needs_sdk = pytest.mark.skipif(not KSERVE_PYTHON.exists() and not REQUIRE_TOOLS,
                               reason="needs .venv-kserve (make test installs it)")


def kserve_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(KSERVE_PYTHON), str(ROOT / "scripts" / "kserve_check.py"), str(path)],
                          capture_output=True, text=True, timeout=120)


BROKEN = {  # a change to the manifest -> what KServe's models say of it
    "unknown field": (("terminationGracePeriodSeconds", "terminationGracePeriod"),
                      "V1beta1PredictorSpec has no field terminationGracePeriod"),
    "wrong type": (("scaleTarget: 70", "scaleTarget: seventy"), ".spec.predictor.scaleTarget: int expected"),
    "missing required field": (("{name: grpc, containerPort: 8001, protocol: TCP}", "{name: grpc, protocol: TCP}"),
                               "V1ContainerPort"),
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The manifest as shipped and each broken copy, checked at once (each check starts KServe's SDK: seconds)."""
    folder = tmp_path_factory.mktemp("kserve")
    paths = {"as shipped": MANIFEST}
    for name, (change, _) in BROKEN.items():
        paths[name] = folder / f"{name.replace(' ', '-')}.yaml"
        paths[name].write_text(MANIFEST.read_text().replace(*change))
    with ThreadPoolExecutor(len(paths)) as pool:
        return dict(zip(paths, pool.map(kserve_check, paths.values())))


@needs_sdk
def test_kserves_models_read_the_manifest_back_unchanged(checked):
    done = checked["as shipped"]
    assert done.returncode == 0, done.stderr
    assert "a valid V1beta1InferenceService" in done.stdout and "ports http1 3000, grpc 8001" in done.stdout


@needs_sdk
@pytest.mark.parametrize("name", list(BROKEN))
def test_a_manifest_kserve_would_refuse_is_refused(checked, name):
    done = checked[name]
    assert done.returncode == 1 and BROKEN[name][1] in done.stderr
    assert MANIFEST.read_text().replace(*BROKEN[name][0]) != MANIFEST.read_text()  # the change applies


def test_the_predictor_runs_the_image_as_the_plain_deployment_does():
    predictor = yaml.safe_load(MANIFEST.read_text())["spec"]["predictor"]
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment-cpu.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    ours, theirs = predictor["containers"][0], pod["containers"][0]
    assert ours["image"] == theirs["image"] and ours["env"] == theirs["env"]
    assert ours["resources"] == theirs["resources"] and ours["lifecycle"] == theirs["lifecycle"]
    assert [p["containerPort"] for p in ours["ports"]] == [p["containerPort"] for p in theirs["ports"]] == [3000, 8001]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ours[probe]["httpGet"]["path"] == theirs[probe]["httpGet"]["path"]
    assert predictor["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
