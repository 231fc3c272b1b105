"""networkpolicy.yaml evaluated against the labels each pod KubeRay 1.5.1 creates will carry:
the flows that must work, and those that must not (see helpers/netpol.py)."""

from __future__ import annotations

import re
import subprocess

import pytest
from helpers.kuberay import (
    REPO,
    docs_of,
    readme_kubernetes_section,
)
from helpers.netpol import (
    Pod,
    allowed,
    applied_policies,
    ingress_policies,
    operator_pods,
    prometheus_pod,
    ray_apps,
    ray_pods,
    selector_matches,
)

# ------------------------------------------------------------------------------------------
# 4. NetworkPolicy, evaluated as the network plugin does (ingress only: egress is not restricted)


def test_selector_evaluation_itself():
    sel = {
        "matchLabels": {"a": "1"},
        "matchExpressions": [
            {"key": "b", "operator": "In", "values": ["x", "y"]},
            {"key": "c", "operator": "NotIn", "values": ["z"]},
            {"key": "d", "operator": "Exists"},
            {"key": "e", "operator": "DoesNotExist"},
        ],
    }
    assert selector_matches(sel, {"a": "1", "b": "x", "d": ""})
    assert selector_matches(sel, {"a": "1", "b": "y", "c": "w", "d": "q"})
    for bad in (
        {"b": "x", "d": ""},
        {"a": "1", "b": "q", "d": ""},
        {"a": "1", "b": "x", "c": "z", "d": ""},
        {"a": "1", "b": "x"},
        {"a": "1", "b": "x", "d": "", "e": ""},
    ):
        assert not selector_matches(sel, bad), bad
    assert selector_matches({}, {"anything": "x"})
    dst = Pod("d", "ns", {"role": "db"}, {"serve": 8000})
    pol = [
        {
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"role": "app"}}}],
                        "ports": [{"port": "serve"}],
                    },
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "ops"}
                                },
                                "podSelector": {"matchLabels": {"role": "admin"}},
                            }
                        ]
                    },
                ],
            },
        }
    ]
    assert allowed(pol, Pod("a", "ns", {"role": "app"}), dst, 8000)
    assert not allowed(pol, Pod("a", "ns", {"role": "app"}), dst, 8001)
    assert not allowed(pol, Pod("a", "other", {"role": "app"}), dst, 8000)
    assert allowed(pol, Pod("o", "ops", {"role": "admin"}), dst, 22)
    assert not allowed(pol, Pod("o", "ops", {"role": "app"}), dst, 8000)
    assert not allowed(pol, Pod("o", "ns", {"role": "admin"}), dst, 22)
    assert allowed(pol, Pod("x", "ns", {}), Pod("free", "ns", {"role": "web"}), 80)


RAY_PORTS = [
    6379,
    8265,
    10001,
    52365,
    8000,
    8080,
    12345,
]  # GCS, dashboard, client, agent, serve, metrics, a worker
METRICS_PORT = 8080  # KubeRay's default metrics-export-port, declared in rayservice.yaml
SCRAPER_NS = "monitoring"


@pytest.fixture(
    params=[("ml", "default"), ("default", "default")], ids=["app-ns-ml", "app-ns-default"]
)
def world(request):
    app_ns, operator_ns = request.param
    apps = ray_apps(app_ns)
    return dict(
        ns=app_ns,
        apps=apps,
        policies=applied_policies(app_ns),
        operators=operator_pods(operator_ns),
        ingress=Pod(
            "ingress-nginx-controller",
            "ingress-nginx",
            {
                "app.kubernetes.io/name": "ingress-nginx",
                "app.kubernetes.io/component": "controller",
            },
        ),
        prometheus=prometheus_pod(SCRAPER_NS),
    )


def test_every_ray_pod_is_isolated_by_the_policy(world):
    for app in world["apps"].values():
        for pod in app.pods:
            assert ingress_policies(world["policies"], pod), (
                f"{pod} ({app.doc['kind']}) is open to all"
            )


def test_ray_pods_of_one_cluster_reach_each_other_on_every_port(world):
    for app in world["apps"].values():
        for src in app.pods:
            for dst in app.pods:
                for port in RAY_PORTS:
                    assert allowed(world["policies"], src, dst, port), (src, dst, port)


def test_each_rayjob_submitter_reaches_its_head_dashboard(world):
    jobs = [a for a in world["apps"].values() if a.doc["kind"] == "RayJob"]
    assert jobs and all(a.submitter for a in jobs)
    for app in jobs:
        assert allowed(world["policies"], app.submitter, app.head, 8265), (
            f"{app.submitter} cannot `ray job submit` to {app.head}:8265"
        )


def test_the_operator_reaches_every_head(world):
    for op in world["operators"]:
        for app in world["apps"].values():
            for port in (8265, 8000) if app.doc["kind"] == "RayService" else (8265,):
                assert allowed(world["policies"], op, app.head, port), (op, app.head, port)


def test_the_ingress_reaches_serve_on_8000_only(world):
    ingress = world["ingress"]
    for app in world["apps"].values():
        for pod in app.pods:
            if app.doc["kind"] == "RayService":
                assert allowed(world["policies"], ingress, pod, 8000), pod
            for port in RAY_PORTS:
                if not (app.doc["kind"] == "RayService" and port == 8000):
                    assert not allowed(world["policies"], ingress, pod, port), (pod, port)


def test_prometheus_reaches_the_serve_clusters_metrics_port_only(world):
    prometheus = world["prometheus"]
    for app in world["apps"].values():
        for pod in app.pods:
            serve = app.doc["kind"] == "RayService"
            if serve:
                assert allowed(world["policies"], prometheus, pod, METRICS_PORT), pod
            for port in RAY_PORTS:
                if not (serve and port == METRICS_PORT):
                    assert not allowed(world["policies"], prometheus, pod, port), (pod, port)


def test_no_other_pod_reaches_the_metrics_port(world):
    """Not a Prometheus outside the scraper's namespace, nor another pod inside it."""
    strangers = [
        prometheus_pod(world["ns"]),
        prometheus_pod("tenant-b"),
        Pod("grafana-0", SCRAPER_NS, {"app.kubernetes.io/name": "grafana"}),
        Pod("alertmanager-main-0", SCRAPER_NS, {"app.kubernetes.io/name": "alertmanager"}),
    ]
    (service,) = [a for a in world["apps"].values() if a.doc["kind"] == "RayService"]
    for src in strangers:
        for dst in service.pods:
            assert not allowed(world["policies"], src, dst, METRICS_PORT), (src, dst)


def test_the_scraped_port_is_the_one_ray_exports_on_every_serve_pod():
    """rayservice.yaml's pods export on their port `metrics`, podmonitor.yaml scrapes that port
    of exactly those pods, and networkpolicy.yaml opens that number to the scraper."""
    (service,) = docs_of("RayService")
    (monitor,) = docs_of("PodMonitor")
    spec = service["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == METRICS_PORT, container["name"]
        assert int(group["rayStartParams"].get("metrics-export-port", METRICS_PORT)) == METRICS_PORT
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]
    for app in ray_apps("ml").values():
        for pod in app.pods:
            serve = app.doc["kind"] == "RayService"
            assert selector_matches(selector, pod.labels) == serve, pod
            if serve:
                assert pod.ports["metrics"] == METRICS_PORT, pod
    scraper_rules = [
        rule
        for policy in applied_policies("ml")
        for rule in policy["spec"]["ingress"]
        if any(
            (peer.get("namespaceSelector") or {}).get("matchLabels")
            == {"kubernetes.io/metadata.name": SCRAPER_NS}
            for peer in rule["from"]
        )
    ]
    assert [rule["ports"] for rule in scraper_rules] == [
        [{"port": METRICS_PORT, "protocol": "TCP"}]
    ]


def test_nothing_else_reaches_ray(world):
    ns, policies, apps = world["ns"], world["policies"], world["apps"]
    strangers = [
        Pod("web", ns, {"app": "web"}),
        prometheus_pod(ns),
        # another team's KubeRay cluster in the same namespace
        *ray_pods(
            "other",
            {
                "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head"}]}}},
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "template": {"spec": {"containers": [{"name": "ray-worker"}]}},
                    }
                ],
            },
            ns,
        ),
        # pods that look like the operator, outside its namespace
        *operator_pods("tenant-b"),
        # a Job pod of some other RayJob
        Pod("other-submitter", ns, {"batch.kubernetes.io/job-name": "other", "job-name": "other"}),
    ]
    if world["operators"][0].namespace != ns:
        strangers += operator_pods(ns)
    for app in apps.values():
        for src in strangers:
            for dst in app.pods:
                for port in RAY_PORTS:
                    assert not allowed(policies, src, dst, port), (src, dst, port)


def test_one_ray_cluster_cannot_reach_another(world):
    apps = list(world["apps"].values())
    for a in apps:
        for b in apps:
            if a.cluster == b.cluster:
                continue
            for src in a.pods + ([a.submitter] if a.submitter else []):
                for port in RAY_PORTS:
                    assert not allowed(world["policies"], src, b.head, port), (src, b.head, port)


def documented_operator_namespace_command() -> str:
    section = readme_kubernetes_section()
    match = re.search(r"^(sed .*networkpolicy\.yaml)", section, re.M)
    assert match, "docs/cluster.md: no `sed ... networkpolicy.yaml` line for the operator namespace"
    return match.group(1).split(" | ")[0]


@pytest.mark.parametrize("operator_ns", ["kuberay-system", "ray-system"])
def test_the_operator_namespace_is_the_documented_parameter(operator_ns):
    """docs/cluster.md's command for an operator outside `default` (a Helm install elsewhere)."""
    command = documented_operator_namespace_command()
    out = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"OPERATOR_NS": operator_ns, "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    policies = applied_policies("ml", out)
    apps = ray_apps("ml")
    for op in operator_pods(operator_ns):
        for app in apps.values():
            assert allowed(policies, op, app.head, 8265), (op, app.head)
    for op in operator_pods("default"):  # the default no longer applies
        for app in apps.values():
            assert not allowed(policies, op, app.head, 8265), (op, app.head)
