"""The Kubernetes manifests validate offline against the API schemas, and hang together.

Schema validation uses ``kubernetes-validate`` from PyPI (in the ``test`` extra): it ships the
JSON schemas of every supported Kubernetes version inside the package, so it works without a
network or a cluster. The test skips when the package is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_paths import DEPLOY, KUBERNETES

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - depends on the environment
    kubernetes_validate = None

needs_validator = pytest.mark.skipif(
    kubernetes_validate is None,
    reason="kubernetes-validate not installed: pip install kubernetes-validate ('test' extra)",
)
OLDEST_VERSION = "1.29.0"
"""The oldest Kubernetes the manifests are checked against (besides the newest)."""
SHUTDOWN_TIMEOUT = 10  # gateway/cli.py: web.run_app(shutdown_timeout=10.0)


def documents() -> dict[str, dict[str, Any]]:
    """Return the manifests listed in kustomization.yaml, by kind."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    docs: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text(encoding="utf-8")):
            docs[doc["kind"]] = doc
    return docs


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    assert set(documents()) == {
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    }
    assert (KUBERNETES / "README.md").is_file()


@needs_validator
@pytest.mark.parametrize("version", [OLDEST_VERSION, "latest"])
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    assert kubernetes_validate is not None
    target = kubernetes_validate.latest_version() if version == "latest" else version
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        kubernetes_validate.validate(doc, target, strict=True)


@needs_validator
def test_validator_rejects_a_broken_manifest() -> None:
    """Prove the validation is live: a misspelt field and a wrong type are both caught."""
    assert kubernetes_validate is not None
    version = kubernetes_validate.latest_version()
    typo = documents()["Deployment"]
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)
    wrong = documents()["Deployment"]
    wrong["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, version, strict=True)


def test_deployment_probes_shutdown_and_security() -> None:
    docs = documents()
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/gateway/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/gateway/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/gateway/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_TIMEOUT + int(pre_stop[1])
    assert container["args"][:4] == ["--config", "/config/gateway.yaml", "--host", "0.0.0.0"]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    for box in [*pod["initContainers"], container]:
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        assert box["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # RWO PVC: never two pods


def test_references_between_manifests() -> None:
    docs = documents()
    pod = docs["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["seed"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    claim = volumes["config"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    (env,) = spec["containers"][0]["env"]
    assert env["name"] == "COMFYUI_GATEWAY_ADMIN_TOKEN"
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == docs["Secret"]["metadata"]["name"]
    assert ref["key"] in docs["Secret"]["stringData"]
    for box in [*spec["initContainers"], *spec["containers"]]:
        for mount in box.get("volumeMounts", []):
            assert mount["name"] in volumes
            assert "subPath" not in mount  # subPath mounts never see updates
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    match = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert match.items() <= pod["metadata"]["labels"].items()
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_seed_configuration_is_valid() -> None:
    from gateway.config.loader import parse_config

    text = documents()["ConfigMap"]["data"]["gateway.yaml"]
    config = parse_config(text, "configmap")
    assert config.listen.host == "0.0.0.0"
    assert config.listen.port == 8190
    assert config.admin.token is None  # the token comes from the Secret, never the ConfigMap


# -- the initContainer's seeding script, run for real with /bin/sh -------------------------------


def run_seed(tmp_path: Path) -> str:
    spec = documents()["Deployment"]["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "-c"]
    script = init["args"][0]
    script = script.replace("/seed/", f"{tmp_path}/seed/").replace(
        "/config/", f"{tmp_path}/config/"
    )
    shell = shutil.which("sh")
    assert shell is not None
    result = subprocess.run(
        [shell, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_script_copies_once_and_keeps_admin_changes(tmp_path: Path) -> None:
    seed, config = tmp_path / "seed", tmp_path / "config"
    seed.mkdir()
    config.mkdir()
    (seed / "gateway.yaml").write_text("servers: []\n")
    assert "seeded" in run_seed(tmp_path)
    assert (config / "gateway.yaml").read_text() == "servers: []\n"

    (config / "gateway.yaml").write_text("servers: []\nactive: null  # admin change\n")
    assert "keeping" in run_seed(tmp_path)  # a restart keeps the admin's change
    assert "admin change" in (config / "gateway.yaml").read_text()

    (seed / "gateway.yaml").write_text("servers: []\n# new seed\n")  # the ConfigMap changed
    assert "seeded" in run_seed(tmp_path)
    assert (config / "gateway.yaml").read_text().endswith("# new seed\n")
    assert "admin change" in (config / "gateway.yaml.before-seed").read_text()


def test_readme_explains_the_read_only_configmap() -> None:
    text = (KUBERNETES / "README.md").read_text(encoding="utf-8")
    assert "read-only" in text
    assert "PersistentVolumeClaim" in text or "PVC" in text
    assert "COMFYUI_GATEWAY_ADMIN_TOKEN" in (DEPLOY / "README.md").read_text(encoding="utf-8")
