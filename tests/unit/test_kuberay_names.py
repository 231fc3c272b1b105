"""Names: no two objects the KubeRay manifests lead to produce one Service or Secret, and the
commands of docs/cluster.md name the right ones."""

from __future__ import annotations

import fnmatch
import re

import pytest
from helpers.kuberay import (
    CR_KINDS,
    KUBERAY,
    cluster_spec,
    docs_of,
    manifests,
    readme_kubernetes_section,
)

# ------------------------------------------------------------------------------------------
# 5. names: Services and Secrets the operator creates, and docs/cluster.md's references to them


# utils.GenerateRayClusterName: <name>-<rand.String(5)>, from k8s.io/apimachinery's alphabet
RANDOM5 = "[bcdfghjklmnpqrstvwxz2456789]" * 5


def produced(kind: str) -> list[tuple[str, str]]:
    """(name or fnmatch pattern, producer) of every Service / Secret the manifests lead to
    (utils.GenerateHeadServiceName, GenerateServeServiceName, reconcileAuthSecret)."""
    out = []
    for _, doc in manifests():
        name, k = doc["metadata"]["name"], doc["kind"]
        spec = cluster_spec(doc)
        if k in CR_KINDS and spec is not None:
            cluster = name if k == "RayCluster" else f"{name}-{RANDOM5}"
            head = spec["headGroupSpec"]
            if kind == "Service":
                out.append(
                    (
                        ((head.get("headService") or {}).get("metadata") or {}).get("name")
                        or f"{cluster}-head-svc",
                        f"{k}/{name}",
                    )
                )
                if head.get("enableIngress"):
                    out.append((f"{cluster}-head-ingress", f"{k}/{name}"))
            if kind == "Secret" and (spec.get("authOptions") or {}).get("mode") == "token":
                out.append((cluster, f"{k}/{name}"))
        if kind == "Service" and k in ("RayJob", "RayService") and spec is not None:
            out.append((f"{name}-head-svc", f"{k}/{name}"))
        if kind == "Service" and k == "RayService":
            out.append((f"{name}-serve-svc", f"{k}/{name}"))
        if kind == k:
            out.append((name, f"{k}/{name}"))
    if kind == "Secret":  # Secrets docs/cluster.md has the user create
        out += [
            (m, "docs/cluster.md")
            for m in re.findall(r"kubectl create secret generic (\S+)", readme_kubernetes_section())
        ]
    return out


def clashes(names: list[tuple[str, str]]) -> list[tuple]:
    out = []
    for i, (a, pa) in enumerate(names):
        for b, pb in names[i + 1 :]:
            if a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a):
                out.append((a, pa, b, pb))
    return out


@pytest.mark.parametrize("kind", ["Service", "Secret"])
def test_no_two_objects_produce_the_same_name(kind):
    names = produced(kind)
    assert len(names) >= 3
    assert clashes(names) == []


def test_the_clash_check_can_fail():
    assert clashes([("a-head-svc", "RayCluster/a"), ("a-head-svc", "RayService/a")])
    assert clashes(
        [("job-bcd2f-head-svc", "RayCluster/job-bcd2f"), (f"job-{RANDOM5}-head-svc", "RayJob/job")]
    )
    assert not clashes(
        [("job-train-head-svc", "RayJob/job-train"), (f"job-{RANDOM5}-head-svc", "RayService/job")]
    )
    assert not clashes([("a-head-svc", "RayCluster/a"), ("a-serve-svc", "RayService/a")])


def test_the_readmes_commands_name_the_right_objects():
    section = readme_kubernetes_section()
    services = dict(produced("Service"))
    forwards = re.findall(r"kubectl port-forward svc/(\S+) (\d+):(\d+)", section)
    assert {int(p) for _, p, _ in forwards} >= {8000, 8265}
    for svc, _, port in forwards:
        assert svc in services, f"docs/cluster.md port-forwards svc/{svc}, which nothing creates"
        producer = services[svc]
        if port == "8265":  # the Jobs API of the long-lived RayCluster, for `modresnet jobs`
            assert producer.startswith("RayCluster/"), (svc, producer)
        if port == "8000":
            assert producer.startswith("RayService/") and svc.endswith("-serve-svc"), (
                svc,
                producer,
            )
    token_secrets = re.findall(
        r"kubectl get secret (\S+) -o jsonpath='\{\.data\.auth_token\}'", section
    )
    assert token_secrets
    for secret in token_secrets:
        assert secret in {
            d["metadata"]["name"]
            for d in docs_of("RayCluster")
            if d["spec"].get("authOptions", {}).get("mode") == "token"
        }, secret
    for path in re.findall(r"cluster/kuberay/([\w.-]+\.yaml)", section):
        assert (KUBERAY / path).exists(), path


def test_rayjob_comments_point_at_a_real_cluster():
    for path in KUBERAY.glob("rayjob-*.yaml"):
        for name in re.findall(r"ray\.io/cluster: ([\w-]+)", path.read_text()):
            assert docs_of("RayCluster") and name in {
                d["metadata"]["name"] for d in docs_of("RayCluster")
            }, (path.name, name)
