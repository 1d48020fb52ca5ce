"""``kpack-image-builder explain``: why a BuildWorkload is where it is, read from the cluster.

A read-only diagnosis, for people: it follows the chain a workload's build goes through — the workload,
its kpack Image, the Image's Builder or ClusterBuilder, the kpack Build of the workload's Image generation
and that Build's pod — and says what is wrong and what to do next. It sits beside the domain and above it:
it reads the strings of the contract and the domain's own judgements (``service.reconcilers.korifi``,
``service.reconcilers.build_steps``) so that it names things exactly as the controllers do, and the
controllers never import it (``tests/test_layers.py``).

- ``explain.py`` gathers the facts (a handful of GETs and one LIST) into small dataclasses;
- ``advice.py`` judges them: healthy or not, and the next steps;
- ``render.py`` writes them as text; ``--output json`` is the same dataclasses through orjson;
- ``command.py`` is the command: kubeconfig, client, exit codes.
"""

from service.diagnosis.command import run_explain
from service.diagnosis.explain import explain
from service.diagnosis.facts import Diagnosis

__all__ = ["Diagnosis", "explain", "run_explain"]
