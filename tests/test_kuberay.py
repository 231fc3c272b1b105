"""The KubeRay manifests (cluster/kuberay/*.yaml) checked the way a cluster would take them, with
no cluster:

* the custom resources against KubeRay's own CRD schemas (v1.5.1, identical at v1.5.2; read
  from $MODRESNET_KUBERAY_CRDS or ../shared/kuberay-crds, see `crd_dir`), unknown fields rejected as
  `kubectl apply` (server-side field validation: Strict) rejects them;
* the core kinds, and every pod template inside the custom resources, against the Kubernetes
  OpenAPI schemas of 1.30 to 1.37 (the `kubernetes-validate` package, strict mode);
* the NetworkPolicies evaluated against the labels each pod will really carry (derived as KubeRay
  1.5.1 labels them, see `pods_of`), for the flows that must work and those that must not;
* names: no two objects produce one Service or Secret, and the README's commands name the right ones.

No real Kubernetes runs here (no container engine, no registry for the node, operator or Ray
images); see the README's Kubernetes section.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
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


K8S_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]
CR_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
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
    text = (REPO / "README.md").read_text()
    start = text.index("**Kubernetes (KubeRay")
    end = text.index("\n## ", start)
    return text[start:end]


# ------------------------------------------------------------------------------------------
# 1. custom resources against KubeRay's CRD schemas, unknown fields rejected


def strict(schema: dict) -> dict:
    """A CRD structural schema as JSON Schema that rejects unknown fields, like the API server
    with field validation Strict: every object without x-kubernetes-preserve-unknown-fields and
    without additionalProperties gets additionalProperties: false; `nullable` becomes a null type."""
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
    # the README names the KubeRay version the schemas come from
    assert "KubeRay ≥ 1.5.1" in readme_kubernetes_section()


@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in manifests() if d["kind"] in CR_KINDS],
    ids=lambda x: x if isinstance(x, str) else x["metadata"]["name"],
)
def test_custom_resources_match_kuberays_crd(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc) == []


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


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_and_pod_templates_match_the_kubernetes_schemas(version):
    import kubernetes_validate

    for name, doc in manifests():
        if doc["kind"] in CR_KINDS:
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
        for policy in [doc] if doc["kind"] == "NetworkPolicy" else []:
            labels += list(selectors(policy))
        for mapping in labels:
            for k, v in mapping.items():
                assert is_label_key(k) and is_label_value(v), (name, k, v)


def selectors(policy: dict):
    yield policy["spec"]["podSelector"].get("matchLabels") or {}
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            for key in ("podSelector", "namespaceSelector"):
                if key in peer:
                    yield peer[key].get("matchLabels") or {}


def test_every_placeholder_is_named_in_the_readme_and_storage_class_is_said_to_be_rejected():
    """`<...>` values make a manifest unusable until filled in; the README must say which and
    that the API server rejects storage.yaml as written (a StorageClass name is a DNS subdomain)."""
    section = readme_kubernetes_section()
    placeholders = set()
    for path in KUBERAY.glob("*.yaml"):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            placeholders |= set(re.findall(r"<[a-z0-9-]+>", code))
    assert placeholders == {"<registry>", "<rwx-storage-class>"}
    for placeholder in placeholders:
        assert placeholder in section, f"README's Kubernetes section never mentions {placeholder}"
    (pvc,) = docs_of("PersistentVolumeClaim")
    storage_class = pvc["spec"]["storageClassName"]
    assert not is_dns1123_subdomain(storage_class)  # so the API server rejects it as written
    at = section.index("<rwx-storage-class>")
    assert "reject" in section[max(0, at - 300) : at + 300], (
        "say that the API server rejects it as written"
    )


# ------------------------------------------------------------------------------------------
# 3. the pods KubeRay 1.5.1 creates, with the labels it gives them


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict
    ports: dict = field(default_factory=dict)  # container port name -> number

    def __repr__(self) -> str:
        return f"{self.namespace}/{self.name}"


def template_ports(template: dict) -> dict:
    return {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }


def ray_pods(cluster_name: str, spec: dict, namespace: str, serve: bool = False) -> list[Pod]:
    """Pods of one RayCluster, labelled as common/pod.go labelPod and BuildPod do: the
    template's labels, then KubeRay's own (ray.io/cluster, node-type, group cannot be
    overridden); RayService pods also get ray.io/serve."""

    def labels(node_type, group, template):
        out = {
            "ray.io/is-ray-node": "yes",
            "ray.io/cluster": cluster_name,
            "ray.io/node-type": node_type,
            "ray.io/group": group,
            "ray.io/identifier": f"{cluster_name}-{node_type}"[:63],
            "app.kubernetes.io/name": "kuberay",
            "app.kubernetes.io/created-by": "kuberay-operator",
        }
        for k, v in (template.get("metadata", {}).get("labels") or {}).items():
            if k not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
                out[k] = v
        if serve:
            out["ray.io/serve"] = "true"  # the head's flips false -> true once its proxy is healthy
        return out

    head = spec["headGroupSpec"]["template"]
    pods = [
        Pod(
            f"{cluster_name}-head",
            namespace,
            labels("head", "headgroup", head),
            template_ports(head),
        )
    ]
    for g in spec.get("workerGroupSpecs", []):
        pods.append(
            Pod(
                f"{cluster_name}-{g['groupName']}-worker",
                namespace,
                labels("worker", g["groupName"], g["template"]),
                template_ports(g["template"]),
            )
        )
    return pods


@dataclass
class RayApp:
    """One manifest's Ray cluster: its pods, its head, and its RayJob submitter if any."""

    doc: dict
    cluster: str
    pods: list[Pod]
    submitter: Pod | None = None

    @property
    def head(self) -> Pod:
        return next(p for p in self.pods if p.labels["ray.io/node-type"] == "head")

    @property
    def workers(self) -> list[Pod]:
        return [p for p in self.pods if p.labels["ray.io/node-type"] == "worker"]


def ray_apps(namespace: str) -> dict[str, RayApp]:
    apps = {}
    for doc in docs_of("RayCluster"):
        name = doc["metadata"]["name"]
        apps[name] = RayApp(doc, name, ray_pods(name, doc["spec"], namespace))
    for doc in docs_of("RayService"):  # utils.GenerateRayClusterName: <name>-<5 random>
        name = doc["metadata"]["name"]
        cluster = f"{name}-x7k2q"
        apps[name] = RayApp(
            doc, cluster, ray_pods(cluster, doc["spec"]["rayClusterConfig"], namespace, serve=True)
        )
    for doc in docs_of("RayJob"):
        name, spec = doc["metadata"]["name"], doc["spec"]
        if spec.get("rayClusterSpec"):
            cluster = f"{name}-b9m4z"
            pods = ray_pods(cluster, spec["rayClusterSpec"], namespace)
        else:  # clusterSelector: the job runs on an existing RayCluster
            cluster = spec["clusterSelector"]["ray.io/cluster"]
            pods = apps[cluster].pods
        submitter = None
        if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
            # rayjob_controller.go createNewK8sJob: the Job's pod template is submitterPodTemplate
            # as given; the Job controller adds its own labels, nothing else does
            template = spec.get("submitterPodTemplate") or {}
            uid = "6f1c3c1e-0000-4000-8000-000000000000"
            labels = dict(template.get("metadata", {}).get("labels") or {})
            labels.update(
                {
                    "batch.kubernetes.io/job-name": name,
                    "job-name": name,
                    "batch.kubernetes.io/controller-uid": uid,
                    "controller-uid": uid,
                }
            )
            submitter = Pod(f"{name}-submitter", namespace, labels)
        apps[name] = RayApp(doc, cluster, pods, submitter)
    return apps


def operator_pods(namespace: str) -> list[Pod]:
    """The KubeRay operator pod as each install labels it (v1.5.1): the Helm chart's deployment
    template and values, and ray-operator/config (kustomize)."""
    return [
        Pod(
            "kuberay-operator-helm",
            namespace,
            {
                "app.kubernetes.io/name": "kuberay-operator",
                "app.kubernetes.io/instance": "kuberay-operator",
                "app.kubernetes.io/component": "kuberay-operator",
            },
        ),
        Pod(
            "kuberay-operator-kustomize",
            namespace,
            {
                "app.kubernetes.io/name": "kuberay",
                "app.kubernetes.io/component": "kuberay-operator",
            },
        ),
    ]


# ------------------------------------------------------------------------------------------
# 4. NetworkPolicy, evaluated as the network plugin does (ingress only: egress is not restricted)


def selector_matches(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, src: Pod) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": src.namespace}
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif src.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector", {}), src.labels)


def port_matches(rule_ports: list | None, dst: Pod, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = dst.ports.get(want)
        if want is not None and want <= port <= p.get("endPort", want):
            return True
    return False


def policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])


def ingress_policies(policies: list[dict], dst: Pod) -> list[dict]:
    return [
        p
        for p in policies
        if p["metadata"]["namespace"] == dst.namespace
        and "Ingress" in policy_types(p)
        and selector_matches(p["spec"]["podSelector"], dst.labels)
    ]


def allowed(policies: list[dict], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    selecting = ingress_policies(policies, dst)
    if not selecting:
        return True  # not isolated
    return any(
        peer_ok and port_matches(rule.get("ports"), dst, port, protocol)
        for p in selecting
        for rule in p["spec"].get("ingress") or []
        for peer_ok in [
            not rule.get("from")
            or any(peer_matches(peer, p["metadata"]["namespace"], src) for peer in rule["from"])
        ]
    )


def applied_policies(namespace: str, text: str | None = None) -> list[dict]:
    """networkpolicy.yaml as `kubectl apply -n NAMESPACE -f` creates it."""
    text = text if text is not None else (KUBERAY / "networkpolicy.yaml").read_text()
    out = []
    for doc in yaml.safe_load_all(text):
        if doc:
            assert doc["kind"] == "NetworkPolicy" and "namespace" not in doc["metadata"]
            doc["metadata"]["namespace"] = namespace
            out.append(doc)
    return out


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
    12345,
]  # GCS, dashboard, client, agent, serve, a worker


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


def test_nothing_else_reaches_ray(world):
    ns, policies, apps = world["ns"], world["policies"], world["apps"]
    strangers = [
        Pod("web", ns, {"app": "web"}),
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
    assert match, "README: no `sed ... networkpolicy.yaml` line that sets the operator's namespace"
    return match.group(1).split(" | ")[0]


@pytest.mark.parametrize("operator_ns", ["kuberay-system", "ray-system"])
def test_the_operator_namespace_is_the_documented_parameter(operator_ns):
    """The README's command for an operator outside `default` (a Helm install elsewhere)."""
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


# ------------------------------------------------------------------------------------------
# 5. names: Services and Secrets the operator creates, and the README's references to them


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
    if kind == "Secret":  # Secrets the README has the user create
        out += [
            (m, "README")
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
        assert svc in services, f"README port-forwards svc/{svc}, which nothing creates"
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


# ------------------------------------------------------------------------------------------
# 6. what the Ray pods need, and what the RayService serves


def test_every_ray_container_has_a_memory_backed_dev_shm():
    """Ray's object store lives in /dev/shm; the container runtime's default is 64 MiB."""
    for name, doc in manifests():
        for group, template in pod_templates(doc):
            if group == "submitter":
                continue
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for c in template["spec"]["containers"]:
                mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
                assert mounts, f"{name} {group}/{c['name']}: no /dev/shm volume"
                assert volumes[mounts[0]["name"]].get("emptyDir", {}).get("medium") == "Memory"


def entrypoint_run_dir(doc: dict) -> str:
    args = shlex.split(doc["spec"]["entrypoint"])
    return f"{args[args.index('--storage') + 1]}/{args[args.index('--name') + 1]}"


def test_the_rayservice_serves_a_run_a_rayjob_writes():
    (service,) = docs_of("RayService")
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    runs = {entrypoint_run_dir(d): d["metadata"]["name"] for d in docs_of("RayJob")}
    checkpoint = app["args"]["checkpoint"].rstrip("/")
    producer = next(
        (job for run, job in runs.items() if checkpoint == run or checkpoint.startswith(run + "/")),
        None,
    )
    assert producer, f"{checkpoint} is written by none of {runs}"
    # a manifest that says it feeds rayservice.yaml must be the one that does
    for path in KUBERAY.glob("rayjob-*.yaml"):
        comments = " ".join(
            line for line in path.read_text().splitlines() if line.lstrip().startswith("#")
        )
        if re.search(r"for rayservice\.yaml|rayservice\.yaml serves", comments):
            assert yaml.safe_load(path.read_text())["metadata"]["name"] == producer, path.name


# ------------------------------------------------------------------------------------------
# 7. the project's own conventions: Ray version, token auth, 0-CPU head, no secret in args


@pytest.mark.parametrize(
    "name,kind",
    [
        ("raycluster.yaml", "RayCluster"),
        ("rayjob-train.yaml", "RayJob"),
        ("rayjob-tune.yaml", "RayJob"),
        ("rayservice.yaml", "RayService"),
    ],
)
def test_kuberay_manifests(name, kind):
    doc = yaml.safe_load((KUBERAY / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    for spec in [cluster_spec(doc)] if cluster_spec(doc) else []:
        assert spec["rayVersion"] == "2.60.0"
        assert spec["authOptions"] == {"mode": "token"}
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        groups = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for g in spec["workerGroupSpecs"]:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for template in groups:
            for c in template["spec"]["containers"]:
                assert c["image"].startswith("<registry>/modresnet:")
                assert {"cpu", "memory"} <= set(c["resources"]["requests"])
                assert c["resources"]["requests"] == c["resources"]["limits"]
                assert any(m["mountPath"] == "/mnt/modresnet" for m in c["volumeMounts"])
                for e in c.get("env", []):  # secrets only by reference
                    assert "value" not in e or not re.search("KEY|TOKEN|SECRET", e["name"])
    text = (REPO / "cluster" / "kuberay" / name).read_text()
    assert not re.search(r"(api_key|token)\s*:\s*[A-Za-z0-9]{16,}", text, re.I)
    if kind == "RayJob":
        command = "train" if "train" in name else "tune"
        submitter = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        assert (
            submitter["image"]
            == cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        )
        assert doc["spec"]["entrypoint"].startswith(f"python -m modresnet.cli {command} ")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
        assert not [k for k in env if re.search("KEY|TOKEN|SECRET|PASSWORD", k)]
    if kind == "RayCluster":
        assert {g["groupName"] for g in doc["spec"]["workerGroupSpecs"]} == {"cpu", "gpu"}
        gpu = next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    if kind == "RayService":
        serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
        app = serve_cfg["applications"][0]
        module, _, attr = app["import_path"].partition(":")
        assert (REPO / module.replace(".", "/")).with_suffix(".py").exists()
        assert f"def {attr}(" in (REPO / module.replace(".", "/")).with_suffix(".py").read_text()
        from serve.app import ServeArgs  # the args validate against the real builder's model

        args = ServeArgs.model_validate(app["args"])
        assert args.api_key_env == "MODRESNET_API_KEY"
        assert not [k for k in app["args"] if re.search("key$|token|secret|password", k, re.I)]


# ------------------------------------------------------------------------------------------
# 8. ServeArgs: a misspelt serveConfigV2 arg is an error that names it


def test_rayservice_args_build_and_a_misspelt_arg_is_named():
    pytest.importorskip("ray.serve")
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import ServeArgs, build_app

    (service,) = docs_of("RayService")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    ServeArgs.model_validate(args)
    misspelt = {**args, "max_replica": 8}
    del misspelt["max_replicas"]
    # exactly what `serve deploy` and the RayService's Serve controller call
    with pytest.raises(ValidationError) as err:
        call_user_app_builder_with_args_if_necessary(build_app, misspelt)
    message = str(err.value)
    assert "max_replica" in message and "did you mean 'max_replicas'" in message, message
    with pytest.raises(ValidationError, match="unknown"):
        ServeArgs(checkpoint="x", threds=2)
    # every other check still answers as before
    with pytest.raises(ValidationError, match="below min_replicas"):
        ServeArgs(checkpoint="x", min_replicas=3, max_replicas=2)
