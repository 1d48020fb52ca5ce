"""The service's identity as the Helm chart makes it, on the real control plane: the chart rendered by
Helm's own Go SDK (``helm-python-sdk``, offline), its ServiceAccount, ClusterRole, Role and bindings
created as an installation would create them, and a token for the ServiceAccount from the TokenRequest
API (what the kubelet mounts into the pod), so a client of the test speaks exactly as the deployed
service would — and is refused exactly what the chart does not grant.

``without`` takes one verb out of a rendered rule: the least-privilege tests install the chart's RBAC
minus one permission and show which behaviour fails.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import helm_python
import yaml

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from service.kube.config import ClusterConfig, explicit
from tests.controlplane.cluster import ControlPlane
from tests.helpers import eventually

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kpack-image-builder"
RBAC = "rbac.authorization.k8s.io"
CLUSTER_ROLE = r.Resource(RBAC, "v1", "clusterroles", "ClusterRole", False, False)
CLUSTER_ROLE_BINDING = r.Resource(RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False, False)
ROLE = r.Resource(RBAC, "v1", "roles", "Role", True, False)
ROLE_BINDING = r.Resource(RBAC, "v1", "rolebindings", "RoleBinding", True, False)
IDENTITY_KINDS = {
    "ServiceAccount": r.SERVICE_ACCOUNT,
    "ClusterRole": CLUSTER_ROLE,
    "ClusterRoleBinding": CLUSTER_ROLE_BINDING,
    "Role": ROLE,
    "RoleBinding": ROLE_BINDING,
}
# The values a minimal installation gives (the chart requires the repository prefix).
VALUES = {"config": {"containerRepositoryPrefix": "registry.example/cf/"}}

# A permission the chart grants: (the role's kind, API group, resource, verb).
Permission = tuple[str, str, str, str]


def render_chart(release: str, namespace: str, values: Obj | None = None) -> list[Obj]:
    """Every object the chart renders for this release (``helm template``, with Helm's own library)."""
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values or VALUES, name=release, namespace=namespace)
    return [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")  # not NOTES.txt
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def identity_objects(documents: list[Obj]) -> list[Obj]:
    return [doc for doc in documents if doc["kind"] in IDENTITY_KINDS]


def permissions(documents: list[Obj]) -> set[Permission]:
    """Every (role kind, group, resource, verb) the roles among ``documents`` grant."""
    out: set[Permission] = set()
    for doc in documents:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            for group in rule.get("apiGroups") or ():
                for resource in rule.get("resources") or ():
                    for verb in rule["verbs"]:
                        out.add((doc["kind"], group, resource, verb))
    return out


def without(documents: list[Obj], permission: Permission) -> list[Obj]:
    """``documents`` with one verb taken out of the rule that grants it (a rule left with no verb goes)."""
    kind, group, resource, verb = permission
    out = copy.deepcopy(documents)
    removed = 0
    for doc in out:
        if doc["kind"] != kind:
            continue
        rules = []
        for rule in doc["rules"]:
            if (
                group in rule.get("apiGroups", ())
                and resource in rule.get("resources", ())
                and verb in rule["verbs"]
            ):
                removed += 1
                others = [res for res in rule["resources"] if res != resource]
                if others:  # the other resources of the rule keep the verb
                    rules.append({**rule, "resources": others})
                rest = [v for v in rule["verbs"] if v != verb]
                if rest:
                    rules.append({**rule, "resources": [resource], "verbs": rest})
            else:
                rules.append(rule)
        doc["rules"] = rules
    assert removed, f"no rule grants {permission}"
    return out


@dataclass(frozen=True)
class Identity:
    """The chart's ServiceAccount, installed: its token, a ClusterConfig and a kubeconfig for it."""

    namespace: str  # the release namespace
    service_account: str
    token: str
    cluster: ClusterConfig
    kubeconfig: Obj

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


async def install_identity(admin: KubeClient, cp: ControlPlane, documents: list[Obj]) -> Identity:
    """Create the release namespace and the chart's identity objects, and ask for a token."""
    namespace = next(d["metadata"]["namespace"] for d in documents if d["kind"] == "ServiceAccount")
    account = next(d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount")
    with contextlib.suppress(errors.AlreadyExists):
        await admin.create(
            r.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    for doc in identity_objects(documents):
        resource = IDENTITY_KINDS[doc["kind"]]
        await admin.create(resource, doc, doc["metadata"].get("namespace") if resource.namespaced else None)
    status, _, raw = await admin.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert status == 201, raw
    token: str = yaml.safe_load(raw)["status"]["token"]
    ca = base64.b64encode(cp.pki.ca_cert.read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "realcluster", "cluster": {"server": cp.url, "certificate-authority-data": ca}}
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "chart", "context": {"cluster": "realcluster", "user": account}}],
        "current-context": "chart",
    }
    return Identity(namespace, account, token, explicit(cp.url, token, str(cp.pki.ca_cert)), kubeconfig)


async def remove_identity(admin: KubeClient, identity: Identity, documents: list[Obj]) -> None:
    """Delete what ``install_identity`` made (the release namespace takes its namespaced objects along)."""
    with anyio.CancelScope(shield=True):
        for doc in documents:
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                resource = CLUSTER_ROLE if doc["kind"] == "ClusterRole" else CLUSTER_ROLE_BINDING
                with contextlib.suppress(errors.NotFound):
                    await admin.delete(resource, doc["metadata"]["name"])
        with contextlib.suppress(errors.NotFound):
            await admin.delete(r.NAMESPACE, identity.namespace)


async def allowed(admin: KubeClient, user: str, permission: Permission, namespace: str | None) -> bool:
    """What kube-apiserver's authorizer answers now for ``user`` (a SubjectAccessReview)."""
    _, group, resource, verb = permission
    plural, _, subresource = resource.partition("/")
    attributes = {"group": group, "resource": plural, "verb": verb, "subresource": subresource}
    if namespace:
        attributes["namespace"] = namespace
    status, _, raw = await admin.request(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": attributes},
        },
    )
    assert status == 201, raw
    return bool(yaml.safe_load(raw)["status"].get("allowed"))


async def wait_authorized(
    admin: KubeClient, identity: Identity, granted: set[Permission], refused: Permission | None = None
) -> None:
    """Until the authorizer (fed by an informer, so a moment behind the writes) answers as the roles say."""
    namespace = identity.namespace

    async def settled() -> bool:
        for permission in granted:
            if not await allowed(admin, identity.user, permission, namespace):
                return False
        return refused is None or not await allowed(admin, identity.user, refused, namespace)

    await eventually(settled, what=f"RBAC for {identity.user} in effect")


def release_name() -> str:
    return f"kib-{uuid.uuid4().hex[:6]}"
