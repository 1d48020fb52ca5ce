"""Stack updates reach the droplets of finished workloads; buildpack updates do not (Korifi's ADR "Managing
Builders": "kpack rebuilds the image, the CF controller updates the droplet").

kpack rebuilds an app's image by itself when the builder under it changes (kpack.md §3.2): ``STACK`` when
the run image's digest moved, ``BUILDPACK`` when a buildpack the last build used left the builder,
``LIFECYCLE`` for another lifecycle; several reasons are comma-joined (``BUILDPACK,STACK``). The Build gets
the Image's current generation and the next build number, so it belongs to the workloads of that
generation, which Korifi leaves alone once they have finished (korifi.md §6.2).

The ADR's line: a stack update patches the operating system under an unchanged app, and operators roll it
out, so the app gets the new droplet; a buildpack update changes how the app is built, so it waits for the
developer's next staging. Here: a workload that succeeded takes the newest succeeded Build of its
generation as its droplet when every succeeded Build after the one its droplet came from has the reason
``STACK`` and nothing else. Any other reason — ``BUILDPACK``, ``LIFECYCLE`` (a full build again, with the
builder's current buildpacks), ``BUILDPACK,STACK`` — ends the chain for that generation: kpack builds (or
rebases) each later Build on top of the last image, so later stack updates carry that build's changes too;
the developer's next staging brings both.

Never backwards: the Build the droplet came from is found by its image, and only a succeeded Build with a
higher number replaces it; when that Build is gone (history pruning), nothing proves what a newer one
contains, and the droplet stays. Every workload of the generation that succeeded follows (workloads with
equal specs share a generation and its Builds, korifi.md §6.3): each holds that generation's image, and
any of them may be the build the app runs. Each change is a ``StackUpdated`` Event on the workload. The new
droplet is read from the registry as the first one was (``Track.droplet``: off the workers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from service.kube.conditions import status_of
from service.kube.objects import labels
from service.reconcilers import korifi as k
from service.reconcilers.buildworkload.attempt import Pass
from service.reconcilers.buildworkload.caches import Caches
from service.runtime import Obj, Result

STACK = "STACK"
REGISTRY_SAFETY_REQUEUE = 60.0  # a workload whose registry read runs in the background is looked at again

DropletReader = Callable[[Pass, Obj], Awaitable[Obj | None]]


class StackUpdates:
    def __init__(self, caches: Caches, read_droplet: DropletReader) -> None:
        self.caches = caches
        self.read_droplet = read_droplet

    async def __call__(self, attempt: Pass) -> Result | None:
        """A finished workload: its droplet follows its generation's stack rebuilds (if it succeeded)."""
        work = attempt.work
        if status_of(work, k.SUCCEEDED) != "True":
            return None
        current = droplet_image(work)
        app_guid = labels(work).get(k.APP_GUID_LABEL)
        image_generation = labels(work).get(k.IMAGE_GENERATION_LABEL)
        if not current or not app_guid or not image_generation:
            return None
        build = newer_stack_build(
            self.caches.builds_of(attempt.namespace, app_guid, image_generation), current
        )
        if build is None:
            return None
        droplet = await self.read_droplet(attempt, build)
        if droplet is None:
            return Result(requeue_after=REGISTRY_SAFETY_REQUEUE)  # the registry read wakes it sooner
        work["status"]["droplet"] = droplet
        run_image = ((build.get("status") or {}).get("stack") or {}).get("runImage") or "?"
        attempt.event(
            "Normal",
            k.STACK_UPDATED,
            f"droplet {droplet['registry']['image']} from kpack Build {build['metadata']['name']} "
            f"(stack update, run image {run_image}); was {current}",
        )
        return None


def droplet_image(workload: Obj) -> str:
    return str(
        (((workload.get("status") or {}).get("droplet") or {}).get("registry") or {}).get("image") or ""
    )


def newer_stack_build(builds: Iterable[Obj], current: str) -> Obj | None:
    """The Build whose image should replace the droplet ``current``: the newest succeeded Build after the
    one that made ``current``, if every succeeded Build in between (it included) is a stack update alone;
    else None."""
    succeeded = sorted(
        ((number, b) for b in builds if status_of(b, k.SUCCEEDED) == "True" and (number := _number(b)) >= 0),
        key=lambda pair: pair[0],
    )
    made = next((i for i, (_, b) in enumerate(succeeded) if _latest_image(b) == current), None)
    if made is None:
        return None  # its Build is gone (or was never one of these): nothing proves what came after
    later = [b for _, b in succeeded[made + 1 :]]
    if not later or not all(reasons(b) == [STACK] for b in later):
        return None
    return later[-1]


def reasons(build: Obj) -> list[str]:
    """Why kpack made the Build (``image.kpack.io/reason``), in kpack's order."""
    value = (build["metadata"].get("annotations") or {}).get(k.KPACK_REASON_ANNOTATION) or ""
    return [r for r in value.split(",") if r]


def _latest_image(build: Obj) -> str:
    return str((build.get("status") or {}).get("latestImage") or "")


def _number(build: Obj) -> int:
    """The build number, or -1 when it does not parse (kpack itself cannot order such a Build)."""
    value = labels(build).get(k.KPACK_BUILD_NUMBER_LABEL, "")
    return int(value) if value.isdigit() else -1
