"""What makes a BuildWorkload unbuildable whatever is retried: problems in the workload itself.

Korifi's component retries these for ever, and the workload never gets a ``Succeeded`` condition: no app
guid label (nothing to name the Image by), an app guid that cannot be an object name, no source image, or
an environment so large that kpack can never create the Build. Each is found before anything is written,
and ends the workload with ``Succeeded=False`` and a message saying what to fix.
"""

from __future__ import annotations

import orjson

from service.kube.names import dns1123_subdomain_errors
from service.reconcilers import korifi as k
from service.runtime import Obj

# Kubernetes limits the annotations of one object to 256 KiB in all (apimachinery's
# TotalAnnotationSizeLimitB). kpack's Build records the build's env, services and source twice in its
# ``image.kpack.io/buildChanges`` annotation (the last build's and this one's, for a CONFIG change), so a
# larger build configuration makes every Build creation fail and kpack retries it for ever.
ANNOTATION_LIMIT = 256 * 1024
ANNOTATION_SLACK = 4 * 1024  # the rest of the annotation: reasons, resources, JSON keys


def app_guid(work: Obj) -> str:
    return str(((work.get("metadata") or {}).get("labels") or {}).get(k.APP_GUID_LABEL) or "")


def problem(work: Obj) -> str | None:
    """Why this workload can never be built, or None."""
    guid = app_guid(work)
    if not guid:
        return f"BuildWorkload has no {k.APP_GUID_LABEL} label: cannot name its kpack Image"
    name_errors = dns1123_subdomain_errors(guid)
    if name_errors:
        return f'app guid "{guid}" cannot name a kpack Image: {"; ".join(name_errors)}'
    spec = work.get("spec") or {}
    source = (spec.get("source") or {}).get("registry") or {}
    if not str(source.get("image") or "").strip():
        return "spec.source.registry.image is empty: there is no source image to build"
    config = {"env": spec.get("env") or [], "services": spec.get("services") or [], "source": source}
    size = len(orjson.dumps(config))
    if 2 * size + ANNOTATION_SLACK > ANNOTATION_LIMIT:
        return (
            f"the build's env, services and source take {size} bytes: kpack records them twice in an "
            f"annotation of the Build, and Kubernetes allows {ANNOTATION_LIMIT} bytes of annotations in all"
        )
    return None
