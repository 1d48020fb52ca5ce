"""Controllers declared with the builder, running on a manager against the API emulator: each kind of
source reconciles what it should, filters apply everywhere, the cache's default selector reaches every
informer, and wiring mistakes are refused when the controller is declared."""

from __future__ import annotations

import logging

import anyio
import pytest

from service.kube import resources as r
from service.kube.client import KubeClient
from service.runtime import Manager, ManagerOptions, Obj, Request, enqueue_object, where
from tests.helpers import eventually
from tests.runtime.conftest import cm

pytestmark = pytest.mark.anyio


@pytest.fixture
def client_timeout() -> float:
    return 2.0


def options(**extra: object) -> ManagerOptions:
    return ManagerOptions(name="test", metrics_address=None, probe_address=None, **extra)  # type: ignore[arg-type]


class Seen:
    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def reconcile(self, request: Request) -> None:
        self.requests.append(request)

    def names(self) -> set[str]:
        return {req.name for req in self.requests}


def secret(name: str, owner: Obj | None = None, **labels: str) -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque"}


async def test_for_owns_and_watches_each_reconcile_what_they_should(client: KubeClient) -> None:
    manager = Manager(client, options())
    seen = Seen()

    def by_label(obj: Obj) -> list[Request]:
        target = (obj["metadata"].get("labels") or {}).get("points-at")
        return [Request("default", target)] if target else []

    (
        manager.controller("toy")
        .for_(r.CONFIG_MAP, predicates=[where(lambda o: not o["metadata"]["name"].startswith("skip"))])
        .owns(r.SECRET)
        .watches(r.SERVICE_ACCOUNT, by_label)
        .complete(seen.reconcile)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        owner = await client.create(r.CONFIG_MAP, cm("owner"), "default")
        await client.create(r.CONFIG_MAP, cm("skip-me"), "default")
        await eventually(lambda: "owner" in seen.names(), what="the primary object reconciled")
        seen.requests.clear()
        await client.create(r.SECRET, secret("child", owner), "default")
        await eventually(lambda: seen.names() == {"owner"}, what="an owned object reconciles its owner")
        seen.requests.clear()
        account = {"apiVersion": "v1", "kind": "ServiceAccount"}
        account["metadata"] = {"name": "sa", "namespace": "default", "labels": {"points-at": "elsewhere"}}
        await client.create(r.SERVICE_ACCOUNT, account, "default")
        await eventually(
            lambda: seen.names() == {"elsewhere"}, what="a watched object goes through its mapper"
        )
        assert "skip-me" not in seen.names()
        manager.shutdown()
        tg.cancel_scope.cancel()


async def test_an_event_filter_applies_to_every_source(client: KubeClient) -> None:
    manager = Manager(client, options())
    seen = Seen()
    quiet = where(lambda o: (o["metadata"].get("labels") or {}).get("quiet") != "yes")
    (
        manager.controller("toy")
        .for_(r.CONFIG_MAP)
        .owns(r.SECRET)
        .with_event_filter(quiet)
        .complete(seen.reconcile)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        owner = await client.create(
            r.CONFIG_MAP, cm("owner", metadata={"labels": {"quiet": "yes"}}), "default"
        )
        await client.create(r.SECRET, secret("child", owner, quiet="yes"), "default")
        await client.create(r.CONFIG_MAP, cm("loud"), "default")
        await eventually(lambda: "loud" in seen.names(), what="an unfiltered object reconciled")
        assert "owner" not in seen.names()  # neither its own event nor its child's passed the filter
        manager.shutdown()
        tg.cancel_scope.cancel()


async def test_the_caches_default_selector_reaches_every_informer_and_lister(client: KubeClient) -> None:
    """A shard's selector is set once, on the manager; no controller or lister names it."""
    manager = Manager(client, options(label_selectors={"configmaps": "shard=a"}))
    seen = Seen()
    manager.controller("toy").for_(r.CONFIG_MAP).complete(seen.reconcile)
    lister = manager.informers.lister(r.CONFIG_MAP)
    assert [i.label_selector for i in lister.informers] == ["shard=a"]
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        await client.create(r.CONFIG_MAP, cm("theirs", metadata={"labels": {"shard": "b"}}), "default")
        await client.create(r.CONFIG_MAP, cm("ours", metadata={"labels": {"shard": "a"}}), "default")
        await eventually(lambda: "ours" in seen.names(), what="our shard's object reconciled")
        assert lister.get("default", "ours") is not None and lister.get("default", "theirs") is None
        assert "theirs" not in seen.names()
        manager.shutdown()
        tg.cancel_scope.cancel()


async def test_wiring_mistakes_are_refused_when_declared(client: KubeClient) -> None:
    manager = Manager(client, options())

    async def noop(request: Request) -> None:
        return None

    with pytest.raises(ValueError, match="for_\\(\\) must name the primary resource"):
        manager.controller("a").watches(r.SECRET, enqueue_object).complete(noop)
    with pytest.raises(ValueError, match="one primary resource"):
        manager.controller("b").for_(r.CONFIG_MAP).for_(r.SECRET)
    with pytest.raises(ValueError, match="owns\\(\\) needs for_\\(\\) first"):
        manager.controller("c").owns(r.SECRET)
    with pytest.raises(ValueError, match="already watched"):
        manager.controller("d").for_(r.CONFIG_MAP).watches(r.CONFIG_MAP, enqueue_object)
    manager.controller("e").for_(r.CONFIG_MAP).complete(noop)
    with pytest.raises(ValueError, match="already exists"):
        manager.controller("e").for_(r.SECRET).complete(noop)


async def test_a_reconcile_that_raced_its_objects_deletion_is_not_an_error(
    client: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The API server's 404 for the reconciled object itself means it went meanwhile: logged at info and
    counted as a success. A 404 for another object stays an error."""
    manager = Manager(client, options())
    attempts: dict[str, int] = {}

    async def reconcile(request: Request) -> None:
        attempts[request.name] = attempts.get(request.name, 0) + 1
        if request.name == "gone":
            if attempts["gone"] == 1:  # deleted while its reconcile runs
                await client.delete(r.CONFIG_MAP, "gone", "default")
            await client.merge_patch(r.CONFIG_MAP, "gone", {"data": {"x": "1"}}, "default")
        elif attempts[request.name] <= 2:  # two failures, then a success ends the retries
            await client.merge_patch(r.CONFIG_MAP, "some-other-object", {"data": {"x": "1"}}, "default")

    def errors() -> float:
        return float(manager.metrics.reconcile_errors.labels(controller="toy").value)

    def gone_logged() -> bool:
        return any("object is gone" in rec.getMessage() for rec in caplog.records)

    manager.controller("toy").for_(r.CONFIG_MAP).complete(reconcile)
    caplog.set_level(logging.INFO, logger="service.runtime.controller")
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        await client.create(r.CONFIG_MAP, cm("gone"), "default")
        await client.create(r.CONFIG_MAP, cm("other"), "default")
        # Awaited before shutdown: an attempt cut short by it would count as neither.
        await eventually(
            lambda: attempts.get("other", 0) >= 3 and errors() == 2, what="the other object retried"
        )
        await eventually(gone_logged, what="the vanished object's reconcile")
        manager.shutdown()
        tg.cancel_scope.cancel()
    assert errors() == 2  # both failed attempts at "other", none at "gone"
    messages = [(rec.levelname, rec.getMessage()) for rec in caplog.records if "toy" in str(rec.__dict__)]
    assert any(level == "INFO" and "object is gone" in text for level, text in messages), messages
    assert not any(level == "ERROR" and '"gone"' in text for level, text in messages), messages
