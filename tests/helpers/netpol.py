"""The pods KubeRay 1.5.1 creates, with the labels it gives them, and NetworkPolicy evaluated
as the network plugin does (ingress only): shared by test_kuberay_networkpolicy.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from helpers.kuberay import KUBERAY, docs_of

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


def prometheus_pod(namespace: str, name: str = "kube-prometheus-stack-prometheus") -> Pod:
    """A Prometheus server pod as prometheus-operator labels the StatefulSet it runs for a
    Prometheus resource called `name` (kube-prometheus-stack's, by default)."""
    return Pod(
        f"prometheus-{name}-0",
        namespace,
        {
            "app.kubernetes.io/name": "prometheus",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "prometheus-operator",
            "operator.prometheus.io/name": name,
            "operator.prometheus.io/shard": "0",
            "prometheus": name,
            "statefulset.kubernetes.io/pod-name": f"prometheus-{name}-0",
        },
    )


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
