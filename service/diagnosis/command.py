"""The ``explain`` command: parse ``NAMESPACE/WORKLOAD``, connect as the kubeconfig says, diagnose, print.

Exit codes: 0 healthy, 1 not healthy, 2 the question could not be answered (a malformed argument, no such
workload, a bad kubeconfig, an unreachable or refusing cluster) — the last with one line on stderr, as
``run`` does for bad input. The client retries a broken connection once, not four times as the service's
does: a person is waiting.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import anyio
import orjson

from service.diagnosis.explain import explain
from service.diagnosis.facts import Diagnosis
from service.diagnosis.render import render
from service.kube import config as kube_config
from service.kube import errors
from service.kube.client import KubeClient
from service.kube.names import dns1123_label_errors, dns1123_subdomain_errors

HEALTHY, UNHEALTHY, BAD_INPUT = 0, 1, 2
TIMEOUT = 10.0


class ExplainError(Exception):
    """The question cannot be answered; the message is the one line the command prints."""


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Target:
        namespace, slash, name = text.partition("/")
        if not slash or not namespace or not name:
            raise ExplainError(f"expected NAMESPACE/WORKLOAD, got {text!r}")
        problems = [f"namespace: {e}" for e in dns1123_label_errors(namespace)]
        problems += [f"workload name: {e}" for e in dns1123_subdomain_errors(name)]
        if problems:
            raise ExplainError(f"{text!r} is not NAMESPACE/WORKLOAD: {problems[0]}")
        return cls(namespace, name)


async def diagnose(target: Target, kubeconfig: str | None, context: str | None) -> Diagnosis:
    try:
        cluster = await kube_config.load(kubeconfig, context)
    except kube_config.ConfigError as exc:
        raise ExplainError(str(exc)) from exc
    async with KubeClient(
        cluster, timeout=TIMEOUT, connection_retries=1, user_agent="kpack-image-builder-explain"
    ) as client:
        try:
            return await explain(client, target.namespace, target.name)
        except errors.NotFound as exc:
            raise ExplainError(
                f"BuildWorkload {target.namespace}/{target.name} not found ({exc.message})"
            ) from exc
        except errors.ApiError as exc:
            raise ExplainError(f"cannot read BuildWorkload {target.namespace}/{target.name}: {exc}") from exc


def run_explain(
    target: str, *, kubeconfig: str | None = None, context: str | None = None, output: str = "text"
) -> int:
    """The command: prints the diagnosis on stdout (or one error line on stderr) and returns the exit code."""
    try:
        parsed = Target.parse(target)
        diagnosis = anyio.run(diagnose, parsed, kubeconfig, context)
    except ExplainError as exc:
        print(f"kpack-image-builder: {' '.join(str(exc).split())}", file=sys.stderr)
        return BAD_INPUT
    if output == "json":
        sys.stdout.buffer.write(
            orjson.dumps(diagnosis, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )
        sys.stdout.flush()
    else:
        sys.stdout.write(render(diagnosis))
    return HEALTHY if diagnosis.healthy else UNHEALTHY
