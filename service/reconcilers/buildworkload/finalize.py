"""A workload being deleted: the last workload of an Image generation deletes that generation's Builds
(each then has its droplet deleted from the registry by the kpack Build controller), waits until they are
gone, then lets go.

Only the Builds that existed when the workload was deleted are deleted and waited for: kpack builds again
when every Build of a live Image goes, and Korifi, deleting and waiting for those too, holds the workload
in that loop for as long as its Image lives. A Build kpack makes later goes with the Image, which goes
with its last owner.

Before any of that, every live Build of the generation made for a workload must hold the kpackBuild
finalizer that the kpack Build controller adds (``kpackbuild.wanted``). Korifi's webhook puts it on a Build
as it is created; this service adds it after the fact, so a Build kpack made while no leader ran, or whose
finalizer write is still failing, can be without it. Let go of then, the workload takes the Image with it,
the collector the Build, and a build that pushes meanwhile leaves its droplet in the registry with nothing
left to delete it (seen in the chaos soak). The Build's event wakes the workload once the finalizer lands.

That wait is bounded (``FINALIZER_WAIT_LIMIT`` from the workload's deletion): a finalizer that cannot be
written for that long (the Build controller's ``patch`` on builds refused, say) must not hold an app's
deletion for ever. Past it the workload lets go as Korifi's component would have without its webhook, with
a Warning Event naming the Builds whose droplets may stay in the registry.
"""

from __future__ import annotations

from service.kube import errors
from service.kube.client import KubeClient
from service.kube.objects import has_finalizer, labels, meta, remove_finalizer
from service.kube.resources import BUILD
from service.kube.timestamps import seconds_since
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Pass
from service.reconcilers.buildworkload.caches import Caches
from service.reconcilers.kpackbuild import wanted
from service.runtime import Result

FINALIZE_RETRY = 1.0  # seconds between checks that a finalized generation's Builds are gone
# How long after its deletion a workload waits for its Builds' finalizers: the Build controller retries a
# refused write with backoff (up to 16 min between tries), so a few minutes cover an API server's or a
# webhook's outage, and no more than that stalls a deletion a person waits for.
FINALIZER_WAIT_LIMIT = 300.0


class Finalize:
    def __init__(self, client: KubeClient, caches: Caches) -> None:
        self.client = client
        self.caches = caches

    async def __call__(self, attempt: Pass) -> Result | None:
        work, namespace = attempt.work, attempt.namespace
        if not has_finalizer(work, k.BUILD_WORKLOAD_FINALIZER):
            return None
        app_guid, image_generation = (
            labels(work).get(k.APP_GUID_LABEL),
            labels(work).get(k.IMAGE_GENERATION_LABEL),
        )
        if app_guid is not None and image_generation is not None:
            same = self.caches.workloads_of_generation(namespace, app_guid, image_generation)
            if len(same) == 1:
                generation = self.caches.builds_of(namespace, app_guid, image_generation)
                deleted_at = meta(work).get("deletionTimestamp") or ""
                bare = [b for b in generation if wanted(b) and not b["metadata"].get("deletionTimestamp")]
                if bare:
                    waited = seconds_since(deleted_at)
                    if waited < FINALIZER_WAIT_LIMIT:
                        # a Build without its finalizer yet
                        return Result(requeue_after=min(FINALIZE_RETRY, FINALIZER_WAIT_LIMIT - waited))
                    names = ", ".join(sorted(b["metadata"]["name"] for b in bare))
                    attempt.event(
                        "Warning",
                        k.BUILD_FINALIZER_MISSING,
                        f"kpack Build {names} still without the {k.KPACK_BUILD_FINALIZER} finalizer "
                        f"{FINALIZER_WAIT_LIMIT:.0f} s after the deletion: letting go, its droplet may stay "
                        "in the registry",
                    )
                builds = [
                    b for b in generation if (b["metadata"].get("creationTimestamp") or "") <= deleted_at
                ]
                for build in builds:
                    if build["metadata"].get("deletionTimestamp"):
                        continue
                    try:
                        await self.client.delete(
                            BUILD,
                            build["metadata"]["name"],
                            namespace,
                            preconditions={"uid": build["metadata"]["uid"]},
                        )
                    except errors.NotFound:
                        continue
                    except errors.ApiError as exc:
                        raise errors.ApiError(f"failed to delete builds: {exc.message}") from exc
                if builds:
                    return Result(requeue_after=FINALIZE_RETRY)
        remove_finalizer(work, k.BUILD_WORKLOAD_FINALIZER)
        return None
