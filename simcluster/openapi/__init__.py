"""The OpenAPI documents kube-apiserver serves, for what the emulator serves: ``/openapi/v2`` (JSON, and
the protobuf kubectl asks for) and ``/openapi/v3`` (the index and one document per group version).

kubectl reads them for client-side validation and ``explain`` (v3, or v2 in older versions), to choose
how ``apply`` patches built-in kinds, and to learn whether the server validates fields itself (the
``fieldValidation`` parameter of PATCH).

- **Built-in kinds** come from ``simcluster/openapi_builtin.json``, taken once from the real
  kube-apiserver this project builds (``python -m tests.controlplane.openapi_snapshot``; its provenance
  is in the file): paths, parameters and schemas as that server serves them, for the resources the
  emulator serves, less what it does not do.
- **CRDs** (``crd``) are published from their structural schema as kube-apiserver's apiextensions
  builder publishes them.
- **Serving** (``serving``): documents are built on the first request and kept until the CRDs change;
  v2 is encoded in protobuf (``protobuf``) only when asked for.

Where kube-apiserver would promise what the emulator does not do, the documents say what the emulator
does (docs/emulator.md): no ``fieldValidation`` parameter (the emulator prunes unknown fields silently,
so kubectl validates on its side instead), no ``application/apply-patch+yaml`` (server-side apply is
refused), no protobuf or CBOR media types, no ``/watch/`` or ``/scale`` paths.
``tests/controlplane/test_kubectl_both.py`` compares the documents with the real server's and runs
kubectl against both.
"""

from simcluster.openapi.serving import Documents, respond

__all__ = ["Documents", "respond"]
