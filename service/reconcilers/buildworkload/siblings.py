"""Older workloads of an app that kpack will never build for: a newer generation of the app's Image
superseded theirs before kpack made a Build. The newer workload fails them with ``KpackMissedBuild``
(Korifi's way); each older workload also finds this for itself from its Image's events (``track``), so a
lost write here strands nobody. Absence of their Builds is confirmed with the API first: a lagging Build
cache must not fail a workload whose build exists.
"""

from __future__ import annotations

import copy
import logging

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.conditions import set_condition, status_of
from service.kube.objects import generation, labels
from service.kube.resources import BUILD_WORKLOAD
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Pass, is_ours
from service.reconcilers.buildworkload.caches import BY_IMAGE_GENERATION, Caches, builds_selector
from service.runtime import EventRecorder, Obj, index_value, list_confirmed

log = logging.getLogger("service.reconcilers.buildworkload")


async def builds_exist(
    client: KubeClient, caches: Caches, namespace: str, app_guid: str, image_generation: int
) -> bool:
    """Whether an Image generation has Builds, as the cache says or, when it says none, the API."""
    found = await list_confirmed(
        caches.builds,
        client,
        BY_IMAGE_GENERATION,
        index_value(namespace, app_guid, str(image_generation)),
        namespace,
        builds_selector(app_guid, image_generation),
    )
    return bool(found)


class Siblings:
    def __init__(self, client: KubeClient, caches: Caches, events: EventRecorder) -> None:
        self.client = client
        self.caches = caches
        self.events = events

    async def fail_skipped(self, attempt: Pass, app_guid: str, image_generation: int) -> None:
        """Fail the older workloads of ``app_guid`` that kpack skipped. Errors are logged, not raised."""
        namespace = attempt.namespace
        for sibling in self.caches.workloads_of_app(namespace, app_guid):
            if sibling["metadata"]["name"] == attempt.name or not is_ours(sibling):
                continue
            try:
                theirs = int(labels(sibling).get(k.IMAGE_GENERATION_LABEL, ""))
            except ValueError:
                continue  # not started yet, or failed before its Image: not skipped by kpack
            if theirs >= image_generation or status_of(sibling, k.SUCCEEDED) != "Unknown":
                continue
            try:
                if await builds_exist(self.client, self.caches, namespace, app_guid, theirs):
                    continue
            except errors.ApiError as exc:
                log.warning("could not list the builds of an older build workload: %s", exc.message)
                continue
            await self._fail(sibling)

    async def _fail(self, sibling: Obj) -> None:
        status = copy.deepcopy(sibling.get("status") or {})
        conditions = status.setdefault("conditions", [])
        set_condition(
            conditions,
            k.SUCCEEDED,
            "False",
            k.KPACK_MISSED_BUILD,
            k.KPACK_MISSED_BUILD_MESSAGE,
            generation(sibling),
        )
        meta = sibling["metadata"]
        try:
            await self.client.patch_status(
                BUILD_WORKLOAD,
                meta["name"],
                {
                    "metadata": {"resourceVersion": meta["resourceVersion"]},
                    "status": {"conditions": conditions},
                },
                meta["namespace"],
            )
        except (errors.Conflict, errors.NotFound):
            log.info(  # it sees its own skip from its Image's events, if it still exists
                "older build workload changed meanwhile; it will find itself skipped",
                extra={"sibling": meta["name"]},
            )
        except errors.ApiError as exc:
            log.warning(
                "failed to patch older build workload: %s", exc.message, extra={"sibling": meta["name"]}
            )
        else:
            self.events.record(sibling, "Warning", k.KPACK_MISSED_BUILD, k.KPACK_MISSED_BUILD_MESSAGE)
