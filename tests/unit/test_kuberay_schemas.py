"""The KubeRay manifests against the schemas a cluster would check them with: the custom
resources against KubeRay's CRDs and the PodMonitor against prometheus-operator's, the core
kinds and every pod template against the Kubernetes OpenAPI schemas (strict), and names and
labels against the API server's rules."""

from __future__ import annotations

import copy
import re

import pytest
from helpers.kuberay import (
    CR_KINDS,
    DNS1035_LABEL,
    K8S_VERSIONS,
    KUBERAY,
    MAX_NAME,
    PROMETHEUS_KINDS,
    crd,
    crd_errors,
    doc_named,
    docs_of,
    is_dns1123_subdomain,
    is_label_key,
    is_label_value,
    k8s_validator,
    manifests,
    pod_templates,
    readme_kubernetes_section,
    selectors,
)

# ------------------------------------------------------------------------------------------
# 1. custom resources against KubeRay's CRD schemas, unknown fields rejected


def test_the_pinned_crds_are_kuberays_v1_schemas():
    for kind, plural in CR_KINDS.items():
        pinned = crd(kind)
        assert pinned["kind"] == kind and pinned["group"] == "ray.io" and pinned["version"] == "v1"
        assert pinned["_source"]["tag"] == "v1.5.1"
        assert pinned["_source"]["path"].endswith(f"ray.io_{plural}.yaml")
        spec = pinned["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert {
            "RayCluster": "headGroupSpec",
            "RayJob": "rayClusterSpec",
            "RayService": "rayClusterConfig",
        }[kind] in spec
    # docs/cluster.md names the KubeRay version the schemas come from
    assert "KubeRay ≥ 1.5.1" in readme_kubernetes_section()


@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in manifests() if d["kind"] in CR_KINDS],
    ids=lambda x: x if isinstance(x, str) else x["metadata"]["name"],
)
def test_custom_resources_match_kuberays_crd(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc) == []


def test_the_pinned_podmonitor_crd_is_prometheus_operators_v1_schema():
    pinned = crd("PodMonitor")
    assert (pinned["kind"], pinned["group"], pinned["version"]) == (
        "PodMonitor",
        "monitoring.coreos.com",
        "v1",
    )
    assert pinned["_source"]["repo"] == "prometheus-operator/prometheus-operator"
    assert pinned["_source"]["path"].endswith("monitoring.coreos.com_podmonitors.yaml")
    assert "podMetricsEndpoints" in pinned["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_the_podmonitor_matches_prometheus_operators_crd():
    (monitor,) = docs_of("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd_errors(monitor) == []


def test_the_podmonitor_check_rejects_what_the_api_server_rejects():
    (monitor,) = docs_of("PodMonitor")

    def broken(edit):
        doc = copy.deepcopy(monitor)
        edit(doc["spec"], doc["spec"]["podMetricsEndpoints"][0])
        return crd_errors(doc)

    assert broken(lambda spec, _: spec.update(podMetricsEndpoint=[]))
    assert broken(lambda spec, _: spec.pop("selector"))
    assert broken(lambda _, endpoint: endpoint.update(interval="15 s"))
    assert broken(lambda _, endpoint: endpoint.update(metricRelabeling=[]))
    assert broken(lambda _, endpoint: endpoint["metricRelabelings"][0].update(action="rename"))
    assert broken(
        lambda _, endpoint: endpoint["metricRelabelings"][0].update(source_labels=["__name__"])
    )


def test_the_crd_check_rejects_what_the_api_server_rejects():
    ray_cluster = doc_named("RayCluster", docs_of("RayCluster")[0]["metadata"]["name"])
    job = docs_of("RayJob")[0]

    def broken(doc, edit):
        doc = copy.deepcopy(doc)
        edit(doc)
        return crd_errors(doc)

    assert broken(ray_cluster, lambda d: d["spec"]["headGroupSpec"].update(rayStartParam={}))
    assert broken(ray_cluster, lambda d: d["spec"].update(submitterPodTemplate={}))
    assert broken(ray_cluster, lambda d: d["spec"]["authOptions"].update(mode="tokens"))
    assert broken(ray_cluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="2"))
    assert broken(
        ray_cluster,
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            volumeMount=[]
        ),
    )
    assert broken(
        ray_cluster,
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ].update(cpu="two"),
    )
    assert broken(job, lambda d: d["spec"].update(ttlSecondsAfterFinished="600"))
    assert broken(job, lambda d: d["spec"].update(shutdownAfterJobFinish=True))
    assert broken(
        job,
        lambda d: d["spec"].update(
            submitterPodTemplate={
                "spec": {"containers": [{"name": "x", "image": "y", "label": "z"}]}
            }
        ),
    )


def test_no_field_relies_on_a_cel_rule_this_check_does_not_evaluate():
    """The CRDs' x-kubernetes-validations (CEL) guard managedBy and deletionStrategy only."""

    def cel_paths(schema, path=()):
        if "x-kubernetes-validations" in schema:
            yield path
        for key, sub in schema.get("properties", {}).items():
            yield from cel_paths(sub, path + (key,))
        if isinstance(schema.get("items"), dict):
            yield from cel_paths(schema["items"], path + ("*",))

    def present(doc, path):
        if not path:
            return True
        if path[0] == "*":
            return isinstance(doc, list) and any(present(d, path[1:]) for d in doc)
        return isinstance(doc, dict) and path[0] in doc and present(doc[path[0]], path[1:])

    for _, doc in manifests():
        if doc["kind"] in CR_KINDS:
            paths = list(cel_paths(crd(doc["kind"])["openAPIV3Schema"]))
            assert paths, "the pinned CRDs carry CEL rules; did the pin lose them?"
            assert [p for p in paths if present(doc, p)] == []
        if doc["kind"] in PROMETHEUS_KINDS:
            paths = list(cel_paths(crd(doc["kind"])["openAPIV3Schema"]))
            assert [p for p in paths if present(doc, p)] == []


# ------------------------------------------------------------------------------------------
# 2. Kubernetes schemas: core kinds and every pod template, strict (unknown fields rejected)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_and_pod_templates_match_the_kubernetes_schemas(version):
    import kubernetes_validate

    for name, doc in manifests():
        if doc["kind"] in CR_KINDS or doc["kind"] in PROMETHEUS_KINDS:
            meta = k8s_validator(version, "objectmeta-meta-v1.json")
            assert [e.message for e in meta.iter_errors(doc["metadata"])] == [], name
            for group, template in pod_templates(doc):
                errors = k8s_validator(version, "podtemplatespec-v1.json").iter_errors(template)
                assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == [], (
                    name,
                    group,
                )
        else:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_kubernetes_schema_check_can_fail():
    import kubernetes_validate

    policy = copy.deepcopy(docs_of("NetworkPolicy")[0])
    policy["spec"]["podselector"] = policy["spec"].pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, K8S_VERSIONS[-1], strict=True)
    template = copy.deepcopy(pod_templates(docs_of("RayCluster")[0])[0][1])
    template["spec"]["containers"][0]["volumeMounts"][0]["mountpath"] = "/x"
    assert list(k8s_validator(K8S_VERSIONS[0], "podtemplatespec-v1.json").iter_errors(template))


def test_names_and_labels_follow_the_api_servers_rules():
    for name, doc in manifests():
        meta_name = doc["metadata"]["name"]
        assert is_dns1123_subdomain(meta_name), (name, meta_name)
        if doc["kind"] in CR_KINDS:  # KubeRay's ValidateRay*Metadata
            assert DNS1035_LABEL.match(meta_name) and len(meta_name) <= MAX_NAME[doc["kind"]], (
                meta_name
            )
        labels = [doc["metadata"].get("labels") or {}]
        labels += [t.get("metadata", {}).get("labels") or {} for _, t in pod_templates(doc)]
        if doc["kind"] in ("NetworkPolicy", "PodMonitor"):
            labels += list(selectors(doc))
        for mapping in labels:
            for k, v in mapping.items():
                assert is_label_key(k) and is_label_value(v), (name, k, v)


def test_every_placeholder_is_named_in_the_readme_and_storage_class_is_said_to_be_rejected():
    """`<...>` values make a manifest unusable until filled in; docs/cluster.md must say which and
    that the API server rejects storage.yaml as written (a StorageClass name is a DNS subdomain)."""
    section = readme_kubernetes_section()
    placeholders = set()
    for path in KUBERAY.glob("*.yaml"):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            placeholders |= set(re.findall(r"<[a-z0-9-]+>", code))
    assert placeholders == {"<registry>", "<rwx-storage-class>"}
    for placeholder in placeholders:
        assert placeholder in section, f"docs/cluster.md never mentions {placeholder}"
    (pvc,) = docs_of("PersistentVolumeClaim")
    storage_class = pvc["spec"]["storageClassName"]
    assert not is_dns1123_subdomain(storage_class)  # so the API server rejects it as written
    at = section.index("<rwx-storage-class>")
    assert "reject" in section[max(0, at - 300) : at + 300], (
        "say that the API server rejects it as written"
    )
