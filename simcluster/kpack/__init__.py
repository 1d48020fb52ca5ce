"""A stand-in for kpack (its controller and its admission webhooks) in the emulated cluster.

Tests, the demo and end-to-end runs of the service need a cluster that behaves as one with kpack
installed: writes of kpack objects defaulted and validated as kpack's webhooks do, and Images turned into
Builds, Builds into images in a registry, builders resolved, with the status kpack writes. See
docs/kpack-simulator.md for the knobs and for where it differs from kpack.
"""

from simcluster.kpack.options import (
    ANNOTATION_BUILD_SECONDS,
    ANNOTATION_DETECT,
    ANNOTATION_FAIL,
    ANNOTATION_NEVER_READY,
    ANNOTATION_POD_PENDING,
    ANNOTATION_PORTS,
    ANNOTATION_PROCESSES,
    ANNOTATION_SKIP_BUILD,
    CatalogBuildpack,
    KpackOptions,
    Lifecycle,
    Process,
    paketo_catalogue,
)
from simcluster.kpack.simulator import (
    KpackSimulator,
    default_objects,
    run_kpack_simulator,
    running_kpack,
    seed_defaults,
)
from simcluster.kpack.webhooks import KpackWebhooks, install_webhooks

__all__ = [
    "ANNOTATION_BUILD_SECONDS",
    "ANNOTATION_DETECT",
    "ANNOTATION_FAIL",
    "ANNOTATION_NEVER_READY",
    "ANNOTATION_POD_PENDING",
    "ANNOTATION_PORTS",
    "ANNOTATION_PROCESSES",
    "ANNOTATION_SKIP_BUILD",
    "CatalogBuildpack",
    "KpackOptions",
    "KpackSimulator",
    "KpackWebhooks",
    "Lifecycle",
    "Process",
    "default_objects",
    "install_webhooks",
    "paketo_catalogue",
    "run_kpack_simulator",
    "running_kpack",
    "seed_defaults",
]
