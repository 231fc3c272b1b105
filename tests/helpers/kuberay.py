"""Helpers shared by the test_kuberay_*.py modules: the manifests as parsed documents, KubeRay's
CRD schemas and the Kubernetes schemas as validators, and the API server's name and label rules.

What the KubeRay tests check, with no cluster:

no cluster:

* the custom resources against KubeRay's own CRD schemas (v1.5.1, identical at v1.5.2; read
  from $MODRESNET_KUBERAY_CRDS or ../shared/kuberay-crds, see `crd_dir`), and the PodMonitor
  against prometheus-operator's (v0.93.0; $MODRESNET_PROMETHEUS_CRDS or
  ../shared/prometheus-operator-crds), unknown fields rejected as `kubectl apply` (server-side
  field validation: Strict) rejects them;
* the core kinds, and every pod template inside the custom resources, against the Kubernetes
  OpenAPI schemas of 1.30 to 1.37 (the `kubernetes-validate` package, strict mode);
* the NetworkPolicies evaluated against the labels each pod will really carry (derived as KubeRay
  1.5.1 labels them, see `pods_of`), for the flows that must work and those that must not;
* names: no two objects produce one Service or Secret, and the commands of docs/cluster.md name
  the right ones.

No real Kubernetes runs here (no container engine, no registry for the node, operator or Ray
images); see the Kubernetes section of docs/cluster.md.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"


def crd_dir() -> Path | None:
    """Third-party schema files are not committed here; the project's shared/ folder holds
    them (rayclusters.v1.json, rayjobs.v1.json, rayservices.v1.json: each the v1
    openAPIV3Schema of ray-operator/config/crd/bases/ray.io_<plural>.yaml at KubeRay v1.5.1,
    descriptions removed, with `_source` naming tag and path)."""
    import os

    for candidate in (
        os.environ.get("MODRESNET_KUBERAY_CRDS"),
        REPO.parent / "shared" / "kuberay-crds",
    ):
        if candidate and (Path(candidate) / "rayclusters.v1.json").exists():
            return Path(candidate)
    return None


def prometheus_crd_dir() -> Path | None:
    """prometheus-operator's CRD schemas, likewise kept in shared/ (podmonitors.v1.json: the v1
    openAPIV3Schema of example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml
    at v0.93.0, descriptions removed, with `_source` naming tag and path)."""
    import os

    for candidate in (
        os.environ.get("MODRESNET_PROMETHEUS_CRDS"),
        REPO.parent / "shared" / "prometheus-operator-crds",
    ):
        if candidate and (Path(candidate) / "podmonitors.v1.json").exists():
            return Path(candidate)
    return None


K8S_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]
CR_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
PROMETHEUS_KINDS = {"PodMonitor": "podmonitors"}
# KubeRay 1.5.1 ray-operator/controllers/ray/utils/constant.go
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def docs_of(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d["kind"] == kind]


def doc_named(kind: str, name: str) -> dict:
    return next(d for d in docs_of(kind) if d["metadata"]["name"] == name)


def cluster_spec(doc: dict) -> dict | None:
    return {
        "RayCluster": lambda: doc["spec"],
        "RayJob": lambda: doc["spec"].get("rayClusterSpec"),
        "RayService": lambda: doc["spec"]["rayClusterConfig"],
    }.get(doc["kind"], lambda: None)()


def readme_kubernetes_section() -> str:
    """The Kubernetes section of the cluster docs (docs/cluster.md), up to the next heading of
    its level or the end of the page."""
    text = (REPO / "docs" / "cluster.md").read_text()
    start = text.index("## Kubernetes (KubeRay")
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


# ------------------------------------------------------------------------------------------
# 1. custom resources against KubeRay's CRD schemas, unknown fields rejected


def strict(schema: dict) -> dict:
    """A CRD structural schema as JSON Schema that rejects unknown fields, like the API server
    with field validation Strict: every object without x-kubernetes-preserve-unknown-fields and
    without additionalProperties gets additionalProperties: false; `nullable` becomes a null
    type."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(s) for s in schema[key]]
    if (
        schema.get("type") == "object"
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        schema["additionalProperties"] = False
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


@functools.cache
def crd(kind: str) -> dict:
    if kind in PROMETHEUS_KINDS:
        directory = prometheus_crd_dir()
        if directory is None:
            pytest.skip(
                "prometheus-operator's CRD schemas are not here: put them in "
                "../shared/prometheus-operator-crds or point MODRESNET_PROMETHEUS_CRDS at them "
                "(see prometheus_crd_dir)"
            )
        return json.loads((directory / f"{PROMETHEUS_KINDS[kind]}.v1.json").read_text())
    directory = crd_dir()
    if directory is None:
        pytest.skip(
            "KubeRay's CRD schemas are not here: put them in ../shared/kuberay-crds or "
            "point MODRESNET_KUBERAY_CRDS at them (see crd_dir)"
        )
    return json.loads((directory / f"{CR_KINDS[kind]}.v1.json").read_text())


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    schema = strict(crd(kind)["openAPIV3Schema"])
    # metadata is ObjectMeta, which the API server checks itself (test_metadata_is_valid)
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]


# ------------------------------------------------------------------------------------------
# 2. Kubernetes schemas: core kinds and every pod template, strict (unknown fields rejected)


@functools.cache
def k8s_validator(version: str, schema_file: str):
    import importlib.resources

    import jsonschema
    import referencing
    from kubernetes_validate.utils import all_versions

    full = max((v for v in all_versions() if v.startswith(version + ".")), default=None)
    assert full, f"kubernetes-validate has no schemas for {version}"
    base = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{full}-local-strict"
    )
    schema = json.loads((base / schema_file).read_text())
    defs = referencing.Resource.from_contents(json.loads((base / "_definitions.json").read_text()))
    registry = referencing.Resource.from_contents(schema) @ (defs @ referencing.Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    out = []
    spec = cluster_spec(doc)
    if spec:
        out.append(("head", spec["headGroupSpec"]["template"]))
        out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and doc["spec"].get("submitterPodTemplate"):
        out.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return out


# the API server's own name and label rules (k8s.io/apimachinery/pkg/util/validation)
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_dns1123_subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and all(DNS1123_LABEL.match(p) for p in value.split("."))


def is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (
        (not prefix or is_dns1123_subdomain(prefix))
        and len(name) <= 63
        and bool(LABEL_NAME.match(name))
    )


def is_label_value(value) -> bool:
    return isinstance(value, str) and (
        value == "" or (len(value) <= 63 and bool(LABEL_NAME.match(value)))
    )


def selectors(doc: dict):
    """The label selectors of a NetworkPolicy or a PodMonitor."""
    if doc["kind"] == "PodMonitor":
        yield doc["spec"]["selector"].get("matchLabels") or {}
        return
    yield doc["spec"]["podSelector"].get("matchLabels") or {}
    for rule in doc["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            for key in ("podSelector", "namespaceSelector"):
                if key in peer:
                    yield peer[key].get("matchLabels") or {}
