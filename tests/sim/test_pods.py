"""Pods, as the kpack simulator uses them: create (with the defaults and the fresh status the server
gives), the status subresource, the field selectors kube-apiserver offers for pods, a label-selected list
and watch, and the delete of an unscheduled pod (immediate: the object, then 404).

On the real server a pod's service account must exist (its ServiceAccount admission plugin refuses the pod
otherwise), so the tests wait for the ``default`` one that kube-controller-manager makes in every new
namespace; the emulator does not check service accounts (docs/emulator.md)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import eventually
from tests.sim.conftest import DEADLINE, Kube, Obj, assert_status

pytestmark = pytest.mark.anyio

PODS = "/api/v1/namespaces/{ns}/pods"
LABEL = "kpack.io/build"


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "prepare", "image": "example.com/builder:1"}],
            "containers": [{"name": "completion", "image": "example.com/completion"}],
            **spec,
        },
    }


async def ready(kube: Kube) -> None:
    if kube.real:
        await eventually(
            lambda: kube.get(kube.path("/api/v1/namespaces/{ns}/serviceaccounts", name="default")),
            DEADLINE,
            "the default service account",
            until=lambda r: r.status == 200,
        )


def terminated(name: str, exit_code: int) -> Obj:
    return {
        "name": name,
        "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if not exit_code else "Error"}},
        "ready": False,
        "restartCount": 0,
        "image": "example.com/builder:1",
        "imageID": "",
    }


async def test_create_and_write_the_status(kube: Kube) -> None:
    await ready(kube)
    created = await kube.create(PODS, {**pod("p1"), "status": {"phase": "Running"}})
    # The server's status, not the client's; its defaults.
    assert created["status"]["phase"] == "Pending"
    assert created["status"]["qosClass"] == "BestEffort"
    assert created["metadata"]["generation"] == 1
    spec = created["spec"]
    assert (spec["restartPolicy"], spec["schedulerName"], spec["dnsPolicy"]) == (
        "Never",
        "default-scheduler",
        "ClusterFirst",
    )
    assert spec["terminationGracePeriodSeconds"] == 30
    assert "nodeName" not in spec
    init = spec["initContainers"][0]
    assert (init["imagePullPolicy"], init["terminationMessagePath"]) == (
        "IfNotPresent",
        "/dev/termination-log",
    )
    assert spec["containers"][0]["imagePullPolicy"] == "Always"  # no tag

    status = {
        "phase": "Failed",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None}],
        "initContainerStatuses": [terminated("prepare", 1)],
        "containerStatuses": [
            {**terminated("completion", 0), "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }
    reply = await kube.patch(kube.path(PODS, name="p1", sub="status"), {"status": status})
    assert reply.status == 200, reply.body
    got = (await kube.get(kube.path(PODS, name="p1"))).body
    assert got["status"]["phase"] == "Failed"
    assert got["status"]["qosClass"] == "BestEffort"  # kept: a merge patch does not name it
    assert got["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    assert got["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert got["spec"] == created["spec"] and got["metadata"]["generation"] == 1
    # A write to the pod itself leaves the status alone.
    labelled = await kube.patch(kube.path(PODS, name="p1"), {"metadata": {"labels": {"a": "b"}}})
    assert labelled.status == 200 and labelled.body["status"]["phase"] == "Failed"


async def test_field_selectors(kube: Kube) -> None:
    await ready(kube)
    await kube.create(PODS, pod("p1"))
    await kube.create(PODS, pod("p2", serviceAccountName="default"))
    patched = await kube.patch(kube.path(PODS, name="p2", sub="status"), {"status": {"phase": "Succeeded"}})
    assert patched.status == 200, patched.body

    async def names(selector: str) -> list[str]:
        reply = await kube.get(kube.path(PODS), fieldSelector=selector)
        assert reply.status == 200, reply.body
        return sorted(kube.names(reply.body))

    assert await names("status.phase=Pending") == ["p1"]
    assert await names("status.phase!=Pending") == ["p2"]
    assert await names("spec.nodeName=") == ["p1", "p2"]
    assert await names("metadata.name=p2,spec.restartPolicy=Never") == ["p2"]
    assert await names("spec.hostNetwork=false,spec.schedulerName=default-scheduler") == ["p1", "p2"]
    assert await names("spec.serviceAccountName=default") == ["p1", "p2"]
    assert_status(
        await kube.get(kube.path(PODS), fieldSelector="spec.image=x"),
        400,
        "BadRequest",
        "field label not supported: spec.image",
    )


async def test_label_selected_list_and_watch_then_an_immediate_delete(kube: Kube) -> None:
    await ready(kube)
    await kube.create(PODS, pod("other"))
    async with kube.watching(kube.path(PODS), labelSelector=LABEL) as w:
        await kube.create(PODS, pod("b1-build-pod", {LABEL: "b1"}))
        added = await w.expect("ADDED", "b1-build-pod")
        reply = await kube.patch(
            kube.path(PODS, name="b1-build-pod", sub="status"),
            {"status": {"initContainerStatuses": [terminated("prepare", 0)]}},
        )
        assert reply.status == 200, reply.body
        await w.expect("MODIFIED", "b1-build-pod")
        listed = await kube.get(kube.path(PODS), labelSelector=LABEL)
        assert kube.names(listed.body) == ["b1-build-pod"]

        # Not scheduled (no nodeName): no grace period, gone at once; the answer is the pod.
        deleted = await kube.delete(kube.path(PODS, name="b1-build-pod"))
        assert deleted.status == 200, deleted.body
        assert deleted.body["kind"] == "Pod"
        assert deleted.body["metadata"]["uid"] == added["metadata"]["uid"]
        # A graceful deletion with a grace period of 0: marked (MODIFIED), then gone (DELETED).
        marked = await w.expect("MODIFIED", "b1-build-pod")
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 0
        assert marked["metadata"]["generation"] == 2
        gone = await w.expect("DELETED", "b1-build-pod")
        assert gone["metadata"]["deletionTimestamp"] == deleted.body["metadata"]["deletionTimestamp"]
        assert gone["metadata"]["resourceVersion"] == deleted.body["metadata"]["resourceVersion"]
        assert int(gone["metadata"]["resourceVersion"]) > int(marked["metadata"]["resourceVersion"])
        assert gone["metadata"]["uid"] == added["metadata"]["uid"]
        assert_status(
            await kube.get(kube.path(PODS, name="b1-build-pod")),
            404,
            "NotFound",
            'pods "b1-build-pod" not found',
        )
        # The same name again is another pod.
        again = await kube.create(PODS, pod("b1-build-pod", {LABEL: "b1"}))
        assert again["metadata"]["uid"] != added["metadata"]["uid"]
        await w.expect("ADDED", "b1-build-pod")
