"""Which buildpacks a workload may ask for: the ids the default ClusterBuilder offers.

As Korifi: the valid ids are the first buildpack of each group of the ClusterBuilder's resolved order
(``status.order``), ids only, no version matching. This is where resolution against kpack's
``ClusterBuildpack`` and ``Buildpack`` resources (kpack RFC 0009: ``id@version``, highest semver, the
namespace's Buildpack first) will be decided; the BuildWorkload controller only asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.runtime import Obj


def offered(cluster_builder: Obj) -> set[str]:
    """The buildpack ids the ClusterBuilder's order offers."""
    return {
        (entry.get("group") or [{}])[0].get("id")
        for entry in (cluster_builder.get("status") or {}).get("order") or ()
        if entry.get("group")
    }


def first_unknown(requested: Sequence[str], cluster_builder: Obj) -> str | None:
    """The first requested buildpack the ClusterBuilder does not offer (Korifi names only the first)."""
    valid = offered(cluster_builder)
    return next((bp for bp in requested if bp not in valid), None)
