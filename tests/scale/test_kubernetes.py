"""deploy/kubernetes, validated offline: the core kinds against Kubernetes' own JSON schemas (strict:
unknown fields fail), the PodMonitor against the structure of its CRD, the KServe resources against the
KServe SDK's model classes (in .venv-tools), and the promises that span files: selectors match labels,
probes hit a declared port, the grace period outlasts the drain, the HPA scales the Deployment, the
server config loads, the image is compose's."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import jsonschema
    import kubernetes_validate
except ImportError as e:  # a collection error that says what to do
    raise ImportError(
        f"{e}: kubernetes-validate is in the dev extra: run scripts/setup.sh (pip install -e '.[train,dev]')"
    ) from e

from server.config import load_config
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes"
KSERVE = K8S / "kserve"
TOOLS_PY = ROOT / ".venv-tools" / "bin" / "python"
KUBERNETES_VERSION = "1.30.0"  # oldest API the manifests promise (grpc probes GA in 1.27, preStop sleep 1.30)
CORE_FILES = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind: str, name: str | None = None, folder: Path = K8S) -> dict:
    found = [
        d
        for f in sorted(folder.glob("*.yaml"))
        for d in docs(f)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {folder}, found {len(found)}"
    return found[0]


def core_docs() -> list[dict]:
    return [d for f in CORE_FILES for d in docs(K8S / f)]


def deployment() -> dict:
    return one("Deployment", "cnn-server")


def container(dep: dict | None = None) -> dict:
    (c,) = (dep or deployment())["spec"]["template"]["spec"]["containers"]
    return c


def server_config(tmp_path: Path):
    cm = one("ConfigMap", "cnn-server-config")
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "config")
    args = container()["args"]
    config_path = args[args.index("--config") + 1]
    key = Path(config_path).relative_to(mount["mountPath"]).as_posix()
    (tmp_path / key).write_text(cm["data"][key])
    return load_config(tmp_path / key, env={})


def quantity(q: str | int) -> float:
    """A Kubernetes quantity (cpu or memory) as a number: "500m" -> 0.5, "160Mi" -> 167772160."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1) if m.group(2) else float(m.group(1))


def compose_server_image() -> str:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]["image"]


# -------------------------------------------------------------------------------------------------
# schemas


def test_kustomization_lists_the_core_resources():
    k = docs(K8S / "kustomization.yaml")[0]
    assert k["kind"] == "Kustomization"
    assert k["resources"] == CORE_FILES
    for f in k["resources"]:
        assert (K8S / f).is_file(), f
    # CRD kinds stay out of the core: `kubectl apply -k` must work on a cluster without them.
    listed = {d["kind"] for d in core_docs()}
    assert listed == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    ks = docs(KSERVE / "kustomization.yaml")[0]
    assert sorted(ks["resources"]) == sorted(p.name for p in KSERVE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {"kustomization.yaml", "podmonitor.yaml", *CORE_FILES} == {p.name for p in K8S.glob("*.yaml")}, (
        "a new manifest must be listed in kustomization.yaml (or be a documented optional one)"
    )


@pytest.mark.parametrize("doc", core_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_manifest_validates_strictly(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_typos_and_misplaced_fields():
    """The schema check is real: a misspelled field, a misplaced one and a wrong type each fail."""
    dep = deployment()
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    misplaced = copy.deepcopy(dep)
    misplaced["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["path"] = "/healthz"
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    for bad in (typo, misplaced, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _wrapped_in_pod(c: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [c]}}


def test_kserve_runtime_container_is_a_valid_kubernetes_container():
    """KServe's ServingRuntime embeds a core/v1 Container: check it with Kubernetes' schema too."""
    (c,) = one("ServingRuntime", "cnn-server", KSERVE)["spec"]["containers"]
    kubernetes_validate.validate(_wrapped_in_pod(c), KUBERNETES_VERSION, strict=True)


# A structural schema for the fields of monitoring.coreos.com/v1 PodMonitor (from the Prometheus
# Operator's CRD: spec and podMetricsEndpoints properties, additionalProperties closed) so that a
# misspelled field fails here rather than being pruned silently by the API server.
_ENDPOINT_FIELDS = [
    "authorization",
    "basicAuth",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "honorLabels",
    "honorTimestamps",
    "interval",
    "metricRelabelings",
    "noProxy",
    "oauth2",
    "params",
    "path",
    "port",
    "portNumber",
    "proxyConnectHeader",
    "proxyFromEnvironment",
    "proxyUrl",
    "relabelings",
    "scheme",
    "scrapeTimeout",
    "targetPort",
    "tlsConfig",
    "trackTimestampsStaleness",
]
_SPEC_FIELDS = [
    "attachMetadata",
    "bodySizeLimit",
    "convertClassicHistogramsToNHCB",
    "fallbackScrapeProtocol",
    "jobLabel",
    "keepDroppedTargets",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "namespaceSelector",
    "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor",
    "podMetricsEndpoints",
    "podTargetLabels",
    "sampleLimit",
    "scrapeClass",
    "scrapeClassicHistograms",
    "scrapeProtocols",
    "selector",
    "selectorMechanism",
    "targetLimit",
]
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                **{f: {} for f in _SPEC_FIELDS},
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            **{f: {} for f in _ENDPOINT_FIELDS},
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}


def podmonitor() -> dict:
    return one("PodMonitor", "cnn-server")


def test_podmonitor_matches_its_crd_structure():
    jsonschema.validate(podmonitor(), PODMONITOR_SCHEMA)
    for field, value in (("interval", "15 s"), ("intervall", "15s"), ("targetport", "metrics")):
        bad = copy.deepcopy(podmonitor())
        bad["spec"]["podMetricsEndpoints"][0][field] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, PODMONITOR_SCHEMA)


# -------------------------------------------------------------------------------------------------
# KServe: the SDK's model classes, in .venv-tools (the SDK's pins clash with the project's)


def check_kserve(*files: Path) -> subprocess.CompletedProcess:
    if not TOOLS_PY.exists():
        pytest.fail(f"{TOOLS_PY} not found: run scripts/setup.sh --system (installs the kserve SDK into .venv-tools)")
    return subprocess.run(
        [str(TOOLS_PY), str(K8S / "check_kserve.py"), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kserve_resources_round_trip_through_the_sdk_models():
    proc = check_kserve(*sorted(KSERVE.glob("*.yaml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   " in proc.stdout and "(V1beta1InferenceService)" in proc.stdout
    assert "(V1alpha1ServingRuntime)" in proc.stdout


BROKEN_INFERENCE_SERVICES = {
    "typo": (
        lambda d: d["spec"]["predictor"]["model"].update(
            protocolVersoin=d["spec"]["predictor"]["model"].pop("protocolVersion")
        ),
        "spec.predictor.model.protocolVersoin: unknown or misplaced field",
    ),
    "misplaced": (
        lambda d: d["spec"]["predictor"].update(protocolVersion="v2"),  # belongs under model
        "spec.predictor.protocolVersion: unknown or misplaced field",
    ),
    "required-missing": (
        lambda d: d["spec"].update(predicter=d["spec"].pop("predictor")),
        "rejected by V1beta1InferenceService",
    ),
    "wrong-type": (
        lambda d: d["spec"]["predictor"].update(minReplicas="2"),
        "spec.predictor.minReplicas: manifest has '2' (str)",
    ),
}


@pytest.fixture(scope="module")
def broken_reports(tmp_path_factory) -> dict[str, str]:
    """check_kserve.py's report on each broken manifest (one subprocess for all: the SDK imports slowly)."""
    d = tmp_path_factory.mktemp("kserve-broken")
    paths = {}
    for case, (mutate, _) in BROKEN_INFERENCE_SERVICES.items():
        bad = one("InferenceService", "cnn-lenet5", KSERVE)
        mutate(bad)
        paths[case] = d / f"{case}.yaml"
        paths[case].write_text(yaml.safe_dump(bad))
    runtime = one("ServingRuntime", "cnn-server", KSERVE)
    runtime["spec"]["containers"][0]["ports"][0]["containerport"] = 8001  # misspelled inside an embedded V1Container
    paths["runtime-typo"] = d / "runtime-typo.yaml"
    paths["runtime-typo"].write_text(yaml.safe_dump(runtime))
    proc = check_kserve(*paths.values())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    sections = re.split(r"^(?=ok   |FAIL )", proc.stdout, flags=re.M)
    return {
        case: next((s for s in sections if s.split(":")[0].split()[-1:] == [str(p)]), proc.stdout)
        for case, p in paths.items()
    }


@pytest.mark.parametrize("case", list(BROKEN_INFERENCE_SERVICES))
def test_kserve_check_rejects_a_broken_inference_service(broken_reports, case):
    report = broken_reports[case]
    assert report.startswith("FAIL ") and BROKEN_INFERENCE_SERVICES[case][1] in report, report


def test_kserve_check_rejects_a_broken_serving_runtime(broken_reports):
    report = broken_reports["runtime-typo"]
    assert report.startswith("FAIL ") and "spec.containers[0].ports[0].containerport" in report, report


# -------------------------------------------------------------------------------------------------
# promises across manifests


def test_selectors_match_the_pod_labels():
    dep = deployment()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": dep["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget": one("PodDisruptionBudget", "cnn-server")["spec"]["selector"]["matchLabels"],
        "PodMonitor": podmonitor()["spec"]["selector"]["matchLabels"],
    }
    for svc in docs(K8S / "service.yaml"):
        selectors[f"Service/{svc['metadata']['name']}"] = svc["spec"]["selector"]
    for what, sel in selectors.items():
        assert sel and sel.items() <= pod_labels.items(), f"{what} selects {sel}, pods have {pod_labels}"
    # The selector must not match pods of other apps: it names the app and the component.
    assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= dep["spec"]["selector"]["matchLabels"].keys()


def test_probes_use_grpc_health_on_a_declared_port():
    c = container()
    ports = {p["containerPort"]: p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = c[probe]["grpc"]
        assert grpc == {"port": 8001, "service": ""}, f"{probe}: {grpc}"
        assert ports.get(grpc["port"]) == "grpc", f"{probe} port {grpc['port']} is not the declared gRPC port"
    (rc,) = one("ServingRuntime", "cnn-server", KSERVE)["spec"]["containers"]
    rports = {p["containerPort"]: p["name"] for p in rc["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert rc[probe]["grpc"] == {"port": 8001, "service": ""} and rports[8001] == "h2c", probe


def test_services_route_to_declared_container_ports():
    by_name = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert by_name == {"grpc": 8001, "metrics": 8002, "http": 8000}
    for svc in docs(K8S / "service.yaml"):
        for p in svc["spec"]["ports"]:
            target = p["targetPort"]
            assert by_name.get(target) if isinstance(target, str) else target in by_name.values(), (
                f"Service {svc['metadata']['name']} port {p['name']} targets {target!r}: no such container port"
            )
            assert by_name.get(target, target) == p["port"], "service ports mirror the container's"
    main_svc = one("Service", "cnn-server")
    assert {p["name"]: p["port"] for p in main_svc["spec"]["ports"]} == {"grpc": 8001, "metrics": 8002, "http": 8000}
    assert one("Service", "cnn-server-headless")["spec"]["clusterIP"] == "None"


def test_server_listens_on_all_pod_interfaces_with_compose_image(tmp_path):
    c = container()
    args = " ".join(c["args"])
    assert "--grpc-address 0.0.0.0:8001" in args and "--metrics-address 0.0.0.0:8002" in args
    assert "--repository /models" in args
    assert c["image"] == compose_server_image(), "the Deployment runs docker-compose.yml's server image"
    (rc,) = one("ServingRuntime", "cnn-server", KSERVE)["spec"]["containers"]
    rargs = " ".join(rc["args"])
    assert "--grpc-address 0.0.0.0:8001" in rargs and "--metrics-address 0.0.0.0:8002" in rargs
    assert rc["image"] == compose_server_image()
    kimages = docs(K8S / "kustomization.yaml")[0]["images"]
    assert [(i["name"], i["newTag"]) for i in kimages] == [tuple(compose_server_image().split(":"))]


def test_config_map_is_a_valid_server_config(tmp_path):
    cfg = server_config(tmp_path)  # load_config raises on unknown keys and bad values
    assert cfg.drain_grace_s > 0


def test_grace_period_outlasts_the_drain(tmp_path):
    drain = server_config(tmp_path).drain_grace_s
    spec = deployment()["spec"]["template"]["spec"]
    c = container()
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    pre_stop_s = pre_stop.get("sleep", {}).get("seconds", 0)
    assert not pre_stop or "sleep" in pre_stop, "a preStop other than sleep would need its own time budget here"
    assert spec["terminationGracePeriodSeconds"] > drain + pre_stop_s, (
        "the kubelet must wait longer than preStop + drain_grace_s before SIGKILL"
    )
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain, (
        "liveness must not give up on a pod within one drain (health is NOT_SERVING while draining)"
    )
    assert c.get("lifecycle") is None, "no preStop: the server drains on SIGTERM by itself (see deployment.yaml)"
    isvc = one("InferenceService", "cnn-lenet5", KSERVE)["spec"]["predictor"]
    assert isvc["terminationGracePeriodSeconds"] > drain
    (rc,) = one("ServingRuntime", "cnn-server", KSERVE)["spec"]["containers"]
    assert rc["livenessProbe"]["periodSeconds"] * rc["livenessProbe"]["failureThreshold"] > drain


def test_hpa_scales_the_deployment_on_cpu():
    hpa = one("HorizontalPodAutoscaler", "cnn-server")
    dep = deployment()
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], dep["kind"], dep["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in container(dep)["resources"]["requests"], "CPU utilisation is relative to the request"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count; a fixed one would be reset on apply"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = one("PodDisruptionBudget", "cnn-server")["spec"]
    assert pdb.get("maxUnavailable", 0) < hpa["spec"]["minReplicas"], "a disruption must leave a replica serving"
    predictor = one("InferenceService", "cnn-lenet5", KSERVE)["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )
    assert (
        predictor["scaleMetric"] == "cpu"
        and predictor["scaleTarget"] == metric["resource"]["target"]["averageUtilization"]
    )


def test_resources_are_sized_from_measurement():
    """Measured: RSS ~97 MB idle, ~110 MB under load, ~196 MB after a 12 MB PNG; ~0.86 core at saturation."""
    for res in (
        container()["resources"],
        one("ServingRuntime", "cnn-server", KSERVE)["spec"]["containers"][0]["resources"],
    ):
        req, lim = res["requests"], res["limits"]
        assert quantity(req["memory"]) >= 128 * 2**20, "below the measured steady RSS plus headroom"
        assert quantity(lim["memory"]) >= 256 * 2**20, "below the measured peak with a large image"
        for key in ("cpu", "memory"):
            assert quantity(req[key]) <= quantity(lim[key]), key
        assert quantity(req["cpu"]) >= 0.5


def test_metrics_scraping_points_at_the_metrics_port():
    tmpl = deployment()["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    metrics_port = next(p for p in container()["ports"] if p["name"] == "metrics")
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == metrics_port["containerPort"]
    (endpoint,) = podmonitor()["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == metrics_port["name"] and endpoint["path"] == ann["prometheus.io/path"] == "/metrics"
    # The dashboards and alerts select job="cnn-server": the PodMonitor's jobLabel must produce it.
    job = tmpl["metadata"]["labels"][podmonitor()["spec"]["jobLabel"]]
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert f'job="{job}"' in alerts
    runtime = one("ServingRuntime", "cnn-server", KSERVE)["spec"]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == str(metrics_port["containerPort"])
    isvc_ann = one("InferenceService", "cnn-lenet5", KSERVE)["metadata"]["annotations"]
    assert isvc_ann["serving.kserve.io/enable-prometheus-scraping"] == "true"


def test_inference_service_uses_the_runtime_over_grpc():
    isvc = one("InferenceService", "cnn-lenet5", KSERVE)
    runtime = one("ServingRuntime", "cnn-server", KSERVE)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2" and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container", "KServe merges the model spec into the container of this name"
    assert c["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}], (
        "one port, named h2c: KServe/Knative route gRPC (HTTP/2 cleartext) to it"
    )
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
