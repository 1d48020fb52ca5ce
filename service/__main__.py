"""Command line: ``kpack-image-builder SUBCOMMAND`` (also ``python -m service``)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

import anyio

# The setting behind each server of the sidecar, for its listen errors.
_BIND_SETTINGS = {"metrics": "metricsBindAddress", "probes": "healthProbeBindAddress"}


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, else ``exc`` itself: an error raised under a
    task group comes out wrapped, whatever else was running beside it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _run(args: argparse.Namespace) -> int:
    from service import config
    from service.app import serve
    from service.kube.config import ConfigError as ClusterConfigError
    from service.runtime import collector
    from service.runtime.logs import setup_logging
    from service.runtime.sidecar import ListenError

    def fail(message: object) -> int:
        # One line, whatever the message holds (a path or a YAML problem with a newline in it).
        print(f"kpack-image-builder: {' '.join(str(message).split())}", file=sys.stderr)
        return 2

    try:
        loaded = config.load(args)
    except config.ConfigError as exc:
        return fail(exc)
    setup_logging(loaded.config.log_level, loaded.config.log_format)
    loaded.log_ignored()
    collector.tune()
    uvloop = loaded.config.event_loop == "uvloop"
    if uvloop and importlib.util.find_spec("uvloop") is None:
        return fail(
            f"eventLoop uvloop ({loaded.sources.get('eventLoop', 'default')}): the uvloop package is not "
            "installed; install it or set eventLoop to asyncio"
        )
    try:
        code: int = anyio.run(serve, loaded.config, backend_options={"use_uvloop": uvloop})
    except (config.ConfigError, ClusterConfigError, ListenError, BaseExceptionGroup) as caught:
        error = _sole(caught)
        if isinstance(error, ListenError):
            keys = [_BIND_SETTINGS[role] for role in error.roles]
            settings = "; ".join(f"{key}, {loaded.sources.get(key, 'default')}" for key in keys)
            return fail(f"{error} ({settings})")
        if isinstance(error, config.ConfigError | ClusterConfigError):
            return fail(error)
        raise
    return code


def _explain(args: argparse.Namespace) -> int:
    from service.diagnosis import run_explain

    # The command's stderr is its one error line: the client's retry warnings would only blur it.
    logging.getLogger().setLevel(logging.CRITICAL)
    return run_explain(args.workload, kubeconfig=args.kubeconfig, context=args.context, output=args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpack-image-builder", description="Korifi's kpack image builder.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the controllers against a cluster",
        description="Run the controllers. Every option can also come from the --config file (its camelCase "
        "key) or from the environment (KPACK_IMAGE_BUILDER_<KEY>); flags win over the environment, which "
        "wins over the file.",
    )
    from service.config import add_flags

    add_flags(run)
    run.set_defaults(func=_run)

    explain = sub.add_parser(
        "explain",
        help="say why a BuildWorkload is where it is (read-only)",
        description="Follow a BuildWorkload's build through its kpack Image, builder, Build and pod, and say "
        "what is wrong and what to do next. Exit status 0 when healthy, 1 when not, 2 when it cannot tell "
        "(bad argument, no such workload, unreachable cluster). See docs/explain.md.",
    )
    explain.add_argument("workload", metavar="NAMESPACE/WORKLOAD", help="the BuildWorkload")
    explain.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)"
    )
    explain.add_argument("--context", help="the kubeconfig context (default: its current-context)")
    explain.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="text (default) or json"
    )
    explain.set_defaults(func=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # run sets up logging itself
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
