"""The controller runtime: informers, work queue, controllers, leader election, sidecar, manager.

Generic machinery in the manner of client-go and controller-runtime; it knows nothing of the domain
(tests/test_layers.py checks). This module is its public API: the product's reconcilers and the
simulated cluster's controllers both use these names and nothing deeper.
"""

from service.runtime.builder import Builder, where
from service.runtime.controller import (
    ANNOTATIONS_CHANGED,
    GENERATION_CHANGED,
    LABELS_CHANGED,
    RESOURCE_VERSION_CHANGED,
    AnyOf,
    Controller,
    Funcs,
    Mapper,
    Predicate,
    changed,
    enqueue_object,
    enqueue_owner,
)
from service.runtime.events import EventRecorder
from service.runtime.informer import Informer, InformerFactory, Lister
from service.runtime.leader import LeaderElectionConfig, LeadershipLost
from service.runtime.manager import Manager, ManagerOptions
from service.runtime.offload import Offload, Outcome
from service.runtime.reads import get_confirmed, list_confirmed
from service.runtime.reconcile import (
    Reconcile,
    ReconcileContext,
    Request,
    Requeue,
    Result,
    TerminalError,
    current,
    expected,
)
from service.runtime.store import Obj, by_labels, index_value
from service.runtime.ttlreads import TTLReads

__all__ = [
    "ANNOTATIONS_CHANGED",
    "GENERATION_CHANGED",
    "LABELS_CHANGED",
    "RESOURCE_VERSION_CHANGED",
    "AnyOf",
    "Builder",
    "Controller",
    "EventRecorder",
    "Funcs",
    "Informer",
    "InformerFactory",
    "LeaderElectionConfig",
    "LeadershipLost",
    "Lister",
    "Manager",
    "ManagerOptions",
    "Mapper",
    "Obj",
    "Offload",
    "Outcome",
    "Predicate",
    "Reconcile",
    "ReconcileContext",
    "Request",
    "Requeue",
    "Result",
    "TTLReads",
    "TerminalError",
    "by_labels",
    "changed",
    "current",
    "enqueue_object",
    "enqueue_owner",
    "expected",
    "get_confirmed",
    "index_value",
    "list_confirmed",
    "where",
]
