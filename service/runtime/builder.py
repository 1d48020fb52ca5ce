"""Controllers declared, not wired: controller-runtime's ``pkg/builder`` for this runtime.

    (manager.controller("replicaset")
        .for_(REPLICA_SET, predicates=[where(is_managed)])
        .owns(POD)
        .watches(NODE, replica_sets_on_node)
        .complete(reconciler.reconcile))

The builder asks the manager's informer factory for the informers each source needs (with the cache's
default label selector for that resource, so a shard's selector reaches every controller without being
threaded through them), applies the event filters to every source, and checks the wiring when
``complete`` is called: one primary resource, each source once, a unique name. Nothing is watched by
reaching into another object's informers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.kube.resources import Resource
from service.runtime.controller import Controller, Funcs, Mapper, Predicate, enqueue_object, enqueue_owner
from service.runtime.reconcile import Reconcile
from service.runtime.store import Obj

if TYPE_CHECKING:
    from service.runtime.manager import Manager


def where(test: Callable[[Obj], bool]) -> Predicate:
    """A predicate from a test of one object: the object created or deleted, the new one on update."""
    return Funcs(create=test, update=lambda _old, new: test(new), delete=test)


@dataclass(frozen=True)
class _Source:
    resource: Resource
    mapper: Mapper
    predicates: tuple[Predicate, ...]
    label_selector: str | None
    what: str  # for messages: "for", "owns" or "watches"
    field_selector: str | None = None


class Builder:
    def __init__(self, manager: Manager, name: str) -> None:
        self._manager = manager
        self._name = name
        self._primary: Resource | None = None
        self._sources: list[_Source] = []
        self._filters: list[Predicate] = []
        self._workers: int | None = None

    def for_(
        self, resource: Resource, *, predicates: Sequence[Predicate] = (), label_selector: str | None = None
    ) -> Builder:
        """The primary resource: its events reconcile the object itself."""
        if self._primary is not None:
            raise ValueError(
                f"controller {self._name}: for_() names one primary resource, "
                f"already {self._primary.qualified}"
            )
        self._primary = resource
        return self._add(resource, enqueue_object, predicates, label_selector, "for")

    def owns(
        self,
        resource: Resource,
        *,
        only_controller: bool = True,
        predicates: Sequence[Predicate] = (),
        label_selector: str | None = None,
    ) -> Builder:
        """Objects owned by the primary resource: their events reconcile their owner (by default only the
        controller owner, as ``EnqueueRequestForOwner``)."""
        if self._primary is None:
            raise ValueError(f"controller {self._name}: owns() needs for_() first, to know the owner's kind")
        primary = self._primary
        mapper = enqueue_owner(
            primary.group, primary.kind, only_controller=only_controller, owner_namespaced=primary.namespaced
        )
        return self._add(resource, mapper, predicates, label_selector, "owns")

    def watches(
        self,
        resource: Resource,
        mapper: Mapper,
        *,
        predicates: Sequence[Predicate] = (),
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Builder:
        """Any other resource: ``mapper`` turns each event's object into the requests to reconcile."""
        return self._add(resource, mapper, predicates, label_selector, "watches", field_selector)

    def with_event_filter(self, *predicates: Predicate) -> Builder:
        """Predicates every source's events must pass."""
        self._filters.extend(predicates)
        return self

    def with_options(self, *, workers: int | None = None) -> Builder:
        self._workers = workers
        return self

    def complete(self, reconcile: Reconcile) -> Controller:
        if self._primary is None:
            raise ValueError(f"controller {self._name}: for_() must name the primary resource")
        controller = self._manager.new_controller(self._name, reconcile, workers=self._workers)
        controller.primary = self._primary
        factory = self._manager.informers
        for source in self._sources:
            informers = factory.informers_for(source.resource, source.label_selector, source.field_selector)
            controller.watch(informers, source.mapper, [*self._filters, *source.predicates])
        return controller

    def _add(
        self,
        resource: Resource,
        mapper: Mapper,
        predicates: Sequence[Predicate],
        label_selector: str | None,
        what: str,
        field_selector: str | None = None,
    ) -> Builder:
        for existing in self._sources:
            if (existing.resource, existing.mapper) == (resource, mapper):
                raise ValueError(
                    f"controller {self._name}: {resource.qualified} is already watched ({existing.what}) "
                    "with the same mapper"
                )
        self._sources.append(
            _Source(resource, mapper, tuple(predicates), label_selector, what, field_selector)
        )
        return self
