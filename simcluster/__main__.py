"""The simulated cluster's command line: ``python -m simcluster devcluster|demo|kpack``.

Not part of the product (the service's image does not carry this package): the demo and the dev
cluster run from a source checkout, where ``make`` installs the simulated cluster's dependencies.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio


def _devcluster(args: argparse.Namespace) -> int:
    from service.runtime import collector
    from simcluster.devcluster import serve

    for d in args.crds:
        if not d.exists():
            print(f"devcluster: --crds {d}: no such file or directory", file=sys.stderr)
            return 2
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        print("devcluster: --tls-cert-file and --tls-private-key-file go together", file=sys.stderr)
        return 2
    if not 0.0 <= args.kpack_failure_rate <= 1.0 or args.kpack_build_seconds < 0:
        print(
            "devcluster: --kpack-failure-rate must be within [0, 1] and --kpack-build-seconds not negative",
            file=sys.stderr,
        )
        return 2
    # The emulator keeps every object and its history (100,000 events): the collector's default settings
    # walked them again and again, a fifth to a third of a write's CPU under load (benchmarks/emulator.py,
    # core lifecycle writes/s with --gc default against tuned).
    collector.tune()
    try:
        anyio.run(
            lambda: serve(
                host=args.host,
                port=args.port,
                kubeconfig_out=args.kubeconfig_out,
                bookmark_interval=args.bookmark_interval,
                crd_dirs=args.crds,
                token=args.token,
                tls_cert=args.tls_cert_file,
                tls_key=args.tls_private_key_file,
                kpack=args.kpack,
                kpack_build_seconds=args.kpack_build_seconds,
                kpack_failure_rate=args.kpack_failure_rate,
                kpack_seed=args.kpack_seed,
                kpack_registry=args.kpack_registry,
            )
        )
    except OSError as exc:
        print(f"devcluster: {exc}", file=sys.stderr)
        return 1
    return 0


def _kpack(args: argparse.Namespace) -> int:
    from service.kube.config import ConfigError
    from service.kube.errors import ApiError
    from simcluster.kpack import KpackOptions
    from simcluster.kpack.simulator import serve_on_cluster
    from simcluster.kpack.webhook_server import RegistrationFailed

    if not 0.0 <= args.failure_rate <= 1.0 or args.build_seconds < 0:
        print("kpack: --failure-rate must be within [0, 1] and --build-seconds not negative", file=sys.stderr)
        return 2
    if args.webhook_url and not args.webhook_url.startswith("https://"):
        print("kpack: --webhook-url must be an https:// URL", file=sys.stderr)
        return 2
    options = KpackOptions(build_seconds=args.build_seconds, failure_rate=args.failure_rate, seed=args.seed)
    try:
        anyio.run(
            lambda: serve_on_cluster(
                kubeconfig=args.kubeconfig,
                context=args.context,
                webhook_host=args.webhook_host,
                webhook_port=args.webhook_port,
                webhook_url=args.webhook_url,
                options=options,
                registry_url=args.registry,
                registry_host=args.registry_host,
                seed=args.create_defaults,
            )
        )
    except Exception as exc:
        # Failures from inside task groups come wrapped in exception groups: these are the user's to fix.
        group = exc if isinstance(exc, ExceptionGroup) else ExceptionGroup("kpack", [exc])
        known, rest = group.split((OSError, ConfigError, RegistrationFailed, ApiError))
        if known is None or rest is not None:
            raise
        for message in _messages(known):
            print(f"kpack: {message}", file=sys.stderr)
        return 1
    return 0


def _messages(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [m for e in exc.exceptions for m in _messages(e)]
    return [str(exc)]


def _demo(args: argparse.Namespace) -> int:
    from service.runtime.logs import setup_logging
    from simcluster.demo import DemoOptions, main

    # The live view owns the terminal: only errors are logged, to stderr.
    setup_logging("error", "text")
    options = DemoOptions(
        build_seconds=args.build_seconds,
        metrics_bind_address=args.metrics_bind_address,
        health_probe_bind_address=args.health_probe_bind_address,
        exit_when_done=args.exit_when_done,
        timeout=args.timeout,
    )
    return main(options, lambda message: print(message, file=sys.stderr))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simcluster",
        description="The simulated cluster of kpack-image-builder: the Kubernetes API emulator, the kpack "
        "simulator and an OCI registry, for tests, benchmarks and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "devcluster", help="serve the Kubernetes API emulator with the service's CRDs loaded"
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=0, help="port to listen on (default: a free port)")
    dev.add_argument(
        "--kubeconfig-out", type=Path, help="write a kubeconfig for the emulator here once it listens"
    )
    dev.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often watches that allow bookmarks get one (default 60)",
    )
    dev.add_argument(
        "--crds",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra CRD YAML files or folders to load at start (repeatable)",
    )
    dev.add_argument("--token", help="require this bearer token from clients")
    dev.add_argument("--tls-cert-file", type=Path, help="serve HTTPS with this certificate")
    dev.add_argument("--tls-private-key-file", type=Path, help="the certificate's private key")
    dev.add_argument(
        "--kpack",
        action="store_true",
        help="also run the kpack simulator (webhooks and controllers) and create the default ClusterStack, "
        "ClusterStore, ClusterBuilder and cf namespace (docs/kpack-simulator.md)",
    )
    dev.add_argument(
        "--kpack-build-seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="how long a simulated build runs (default 2)",
    )
    dev.add_argument(
        "--kpack-failure-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of builds that fail, 0 to 1, the same builds on every run (default 0)",
    )
    dev.add_argument(
        "--kpack-seed", type=int, default=0, metavar="N", help="seed that picks which builds fail (default 0)"
    )
    dev.add_argument(
        "--kpack-registry",
        metavar="URL",
        help="registry builds push to (http://host:port or host:port); default: an in-process registry",
    )
    dev.set_defaults(func=_devcluster)

    kp = sub.add_parser(
        "kpack",
        help="run the kpack simulator against any cluster: controllers, admission webhooks, a registry",
        description="Run the kpack simulator against the cluster of a kubeconfig (one with kpack's CRDs and "
        "without kpack): its controllers, and its defaulting and validation as admission webhooks served "
        "over HTTPS and registered as defaults.webhook.kpack.io and validation.webhook.kpack.io (removed "
        "again on Ctrl-C or SIGTERM). See docs/emulator.md.",
    )
    kp.add_argument("--kubeconfig", help="the cluster's kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    kp.add_argument("--context", help="the kubeconfig context (default: its current context)")
    kp.add_argument(
        "--webhook-host", default="127.0.0.1", help="address the webhooks listen on (default 127.0.0.1)"
    )
    kp.add_argument(
        "--webhook-port", type=int, default=0, help="port the webhooks listen on (default: a free port)"
    )
    kp.add_argument(
        "--webhook-url",
        metavar="URL",
        help="https://host:port the API server calls the webhooks at, when not https://127.0.0.1:PORT "
        "(an API server in a container or VM cannot reach this machine's loopback); the certificate "
        "names its host",
    )
    kp.add_argument(
        "--registry",
        metavar="URL",
        help="registry builds push to (http://host:port or host:port); default: an in-process registry",
    )
    kp.add_argument(
        "--registry-host",
        default="127.0.0.1",
        help="address the in-process registry listens on (default 127.0.0.1)",
    )
    kp.add_argument(
        "--create-defaults",
        action="store_true",
        help="create what Korifi's Helm chart creates next to kpack: the cf namespace, a default "
        "StorageClass, the ClusterStack, ClusterStore and ClusterBuilder (existing ones are left alone)",
    )
    kp.add_argument(
        "--build-seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="how long a simulated build runs (default 2)",
    )
    kp.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of builds that fail, 0 to 1, the same builds on every run (default 0)",
    )
    kp.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed that picks which builds fail (default 0)"
    )
    kp.set_defaults(func=_kpack)

    demo = sub.add_parser(
        "demo",
        help="the whole system on a simulated cluster, with sample workloads shown live",
        description="Start the API emulator, an OCI registry, the kpack simulator and the service in one "
        "process, create sample spaces and BuildWorkloads, and show their progress until Ctrl-C.",
    )
    demo.add_argument(
        "--build-seconds",
        type=float,
        default=3.0,
        metavar="S",
        help="how long a simulated build runs (default 3)",
    )
    demo.add_argument(
        "--metrics-bind-address", default="127.0.0.1:8080", metavar="ADDR", help="default 127.0.0.1:8080"
    )
    demo.add_argument(
        "--health-probe-bind-address", default="127.0.0.1:8081", metavar="ADDR", help="default 127.0.0.1:8081"
    )
    demo.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once every sample finished: 0 if each ended as expected, else 1 (for scripts and tests)",
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="with --exit-when-done, give up after S seconds",
    )
    demo.set_defaults(func=_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "demo":  # the demo sets up logging itself
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
