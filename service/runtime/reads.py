"""A cache miss is not a deletion: reads that confirm an absence with the API before a caller acts on it.

Informer caches lag: after a watch drop, during a relist, or simply because the watch event for an object
this controller created a moment ago has not arrived. A reconcile that finds nothing in the cache and
concludes "it does not exist" may fail an object for good, or delete something another object still
needs. So where an absence would lead to a terminal or destructive decision, the caller asks here: the
cache first (free), the API server only on a miss (one request, on a path that is rare when things are
well). Paths where a miss only delays (the next event requeues anyway) keep reading the cache alone.
"""

from __future__ import annotations

from service.kube import errors
from service.kube.client import KubeClient
from service.runtime.informer import Lister
from service.runtime.store import Obj


async def get_confirmed(lister: Lister, client: KubeClient, namespace: str | None, name: str) -> Obj | None:
    """The object from the cache, else from the API; None only when the API server says it is gone."""
    cached = lister.get(namespace, name)
    if cached is not None:
        return cached
    resource = lister.resource
    try:
        return await client.get(resource, name, namespace if resource.namespaced else None)
    except errors.NotFound:
        return None


async def list_confirmed(
    lister: Lister, client: KubeClient, index: str, value: str, namespace: str, label_selector: str
) -> list[Obj]:
    """The objects of a cache index, else (when the index is empty) the API's list for the same labels."""
    cached = lister.by_index(index, value)
    if cached:
        return cached
    items, _ = await client.list_all(lister.resource, namespace=namespace, label_selector=label_selector)
    return items
