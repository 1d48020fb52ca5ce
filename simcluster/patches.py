"""Patches: the object a PATCH request asks for, before it is written as an update.

kube-apiserver applies a patch to the current object and then runs the result through the update path
(admission, validation, the optimistic lock when the patch carries a resourceVersion), so the emulator
does the same: this module only turns the stored object and the request body into the patched object,
with the errors kube-apiserver gives for a patch it cannot apply, and ``Cluster.patch`` hands it to
``Cluster.update``.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer
import orjson

from service.kube import errors
from simcluster import store
from simcluster.kinds import Kind, Obj

# A pointer that does not resolve ("no finalizers yet", tested on most first writes) otherwise raises an
# error whose message prints the whole parent object, managedFields and all: about 5 % of the emulator's
# CPU under load (py-spy, n = 10,000), for a text kube-apiserver's 422 drops anyway.
jsonpointer.VERBOSE_EXCEPTIONS = False


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. The result shares what it does not change with ``target`` and ``patch``:
    both callers hand it to ``Cluster.update``, which copies its body before changing anything."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(kind: Kind, current: Obj, content_type: str, raw: bytes) -> tuple[Obj, Obj]:
    """``current`` patched as the request says, and what the request set (for managedFields)."""
    try:
        patch = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.BadRequest(f"error decoding patch: {exc}") from None
    if content_type == "application/merge-patch+json" or (
        content_type == "application/strategic-merge-patch+json" and not kind.custom
    ):
        if not isinstance(patch, dict):
            raise errors.BadRequest(
                "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        patched = merge_patch(current, patch)
        raw_body = patch
    elif content_type == "application/json-patch+json":
        if not isinstance(patch, list):
            raise errors.BadRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            patched = _json_patch(patch, store.fresh(current))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            # kube-apiserver wraps the patch library's error in a generic 422 that drops its text
            raise errors.Invalid(
                "the server rejected our request due to an error in our request", details={}
            ) from None
        except (TypeError, KeyError, ValueError) as exc:
            raise errors.BadRequest(f"invalid JSON patch: {exc}") from None
        raw_body = patched
    else:
        supported = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ]
        if not kind.custom:
            supported.insert(2, "application/strategic-merge-patch+json")
        raise errors.UnsupportedMediaType(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(supported)}"
        )
    if not isinstance(patched, dict):
        raise errors.BadRequest("the patched object is not a JSON object")
    return patched, raw_body if isinstance(raw_body, dict) else {}


def _json_patch(ops: list[Any], doc: Any) -> Any:
    """RFC 6902 as kube-apiserver's library (evanphx/json-patch) applies it, which differs from the RFC in
    one way clients rely on: a ``test`` of ``null`` passes for a path that does not exist ("no finalizers
    yet"), where the RFC (and the ``jsonpatch`` library) fails it. So ops go one by one, such a test
    skipped."""
    for op in ops:
        if isinstance(op, dict) and op.get("op") == "test" and op.get("value", 0) is None:
            try:
                jsonpatch.JsonPointer(op.get("path", "")).resolve(doc)
            except jsonpatch.JsonPointerException:
                continue
        doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)  # ``doc`` is the caller's copy
    return doc
