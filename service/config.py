"""The service's configuration: one table of settings, read from a YAML file, the environment and flags.

(Over 600 lines on purpose: the table, its value parsers and the loading that reports where a value came
from are one concern, read together when a setting is added.)

Each setting has a YAML key (camelCase, as in Korifi's ``korifi-controllers-config``, so that ConfigMap
can be mounted as it is), an environment variable ``KPACK_IMAGE_BUILDER_<KEY>`` and a command-line flag.
Flags override the environment, which overrides the file, which overrides the defaults.

Bad values stop the service with one line that names the setting and where the value came from. Keys
the file has but this service does not use (Korifi's other controllers share the file) are ignored with
one log line — unless a key looks like a misspelling of one of ours, which is an error.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from service.reconcilers.settings import CACHE_KINDS, BuilderSettings
from service.runtime.events import RECORDED_TYPES
from service.runtime.logs import FORMATS, LEVELS
from service.runtime.ratelimiters import RATE_LIMITER_KINDS
from service.runtime.sidecar import BindAddress

log = logging.getLogger("service.config")

ENV_PREFIX = "KPACK_IMAGE_BUILDER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
EVENT_LOOPS = ("asyncio", "uvloop")

Parser = Callable[[Any], Any]


class ConfigError(ValueError):
    """Invalid configuration; the message is one line naming the setting."""


# ------------------------------------------------------------------ value parsers
def string(value: Any) -> str:
    if isinstance(value, bool | dict | list) or value is None:
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def optional_string(value: Any) -> str | None:
    return None if value in (None, "") else string(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _whole_number(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None


def positive_int(value: Any) -> int:
    number = _whole_number(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def non_negative_int(value: Any) -> int:
    number = _whole_number(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def finite_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):  # float() takes inf, nan and 1e999; a rate limiter cannot use them
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+(?:\.\d*)?|\.\d+)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(value: Any) -> float:
    """Seconds from a Go duration string (``30s``, ``1m30s``, ``-1s``) or a plain number of seconds (``30``,
    from YAML, the environment or a flag alike)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a duration such as 30s or 1m30s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {value!r}")
        return float(value)
    text = str(value).strip()
    if _PLAIN_NUMBER.fullmatch(text):  # seconds, as a bare YAML number (and as docs/configuration.md says)
        seconds = float(text)
        if not math.isfinite(seconds):  # enough digits overflow to inf
            raise ValueError(f"duration {value!r} is out of range")
        return seconds
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("-", "+") else text  # one sign at most, as Go's ParseDuration
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"expected a duration such as 30s or 1m30s, got {value!r}")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"expected a duration such as 30s or 1m30s, got {value!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not math.isfinite(total):
        raise ValueError(f"duration {value!r} is out of range")
    return sign * total


def non_negative_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {value!r}")
    return seconds


_CHOICES: dict[Parser, tuple[str, ...]] = {}


def one_of(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        text = string(value)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    _CHOICES[parse] = choices
    return parse


# zap's levels, as Korifi's logLevel may spell them; the ones above error all print as error here.
_ZAP_LEVELS = {"dpanic": "error", "panic": "error", "fatal": "error"}


def log_level(value: Any) -> str:
    text = string(value).strip().lower()
    text = _ZAP_LEVELS.get(text, text)
    if text not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, got {value!r}")
    return text


_CHOICES[log_level] = LEVELS

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def names(value: Any) -> tuple[str, ...]:
    """Namespace names: a YAML list, or a comma-separated string (from the environment)."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        items = [string(item) for item in value]
    elif isinstance(value, str):
        items = value.split(",")
    else:
        raise ValueError(f"expected a list of names or a comma-separated string, got {value!r}")
    out: list[str] = []
    for item in items:
        name = item.strip()
        if not name:
            continue
        if len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
            raise ValueError(f"{name!r} is not a namespace name (lower-case letters, digits and '-')")
        if name not in out:
            out.append(name)
    return tuple(out)


# Korifi's values.schema.json pattern for containerRepositoryPrefix: a registry host (with a port) and
# path, concatenated verbatim with repository names, so it normally ends with "/".
_REPOSITORY_PREFIX = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*/?")


def repository_prefix(value: Any) -> str | None:
    if value in (None, ""):
        return None  # unset here; ``run`` requires it (require_builder_settings)
    text = string(value).strip()
    if not _REPOSITORY_PREFIX.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a registry host and path such as registry.example.com/cf/ (lower case; "
            "repository names are appended to it as they are)"
        )
    return text


def hosts(value: Any) -> tuple[str, ...]:
    """Registry hosts (``host`` or ``host:port``): a YAML list, or a comma-separated string."""
    if value is None:
        return ()
    items = [string(v) for v in value] if isinstance(value, list | tuple) else string(value).split(",")
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "/" in item or " " in item:
            raise ValueError(f"{item!r} is not a registry host (host or host:port)")
        out.append(item)
    return tuple(out)


def bind_address(value: Any) -> str:
    BindAddress.parse(string(value))  # validates
    return string(value).strip()


# ------------------------------------------------------------------ the table
def setting(
    key: str,
    default: Any,
    parse: Parser,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = None,
    repeatable: bool = False,
    metavar: str | None = None,
    group: str = "",
) -> Any:
    return field(
        default=default,
        metadata={
            "key": key,
            "group": group,
            "parse": parse,
            "help": help,
            "flag": flag or "--" + _kebab(key),
            "env": ENV_PREFIX + (env or _kebab(key).replace("-", "_").upper()),
            "repeatable": repeatable,
            "metavar": metavar or _METAVARS.get(parse) or _choices_metavar(parse),
        },
    )


# The groups of settings, each read by one part of the service (see ``Config.group``).
cluster = functools.partial(setting, group="cluster")  # which cluster, which namespaces
runtime = functools.partial(setting, group="runtime")  # the manager: probes, metrics, election, workers
client = functools.partial(setting, group="client")  # the Kubernetes client
logging_ = functools.partial(setting, group="logging")
builder = functools.partial(setting, group="builder")  # the reconcilers (Korifi's keys)
registry = functools.partial(setting, group="registry")  # the OCI registry client and its pool


def _kebab(key: str) -> str:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", key.replace(".", "-"))
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1-\2", words).lower()


def env_name(key: str) -> str:
    """The environment variable of a setting (its YAML key)."""
    name: str = SETTINGS[key].metadata["env"]
    return name


def _choices_metavar(parse: Parser) -> str | None:
    choices = _CHOICES.get(parse)
    return "{" + ",".join(choices) + "}" if choices else None


_METAVARS: dict[Parser, str] = {
    duration: "DURATION",
    non_negative_duration: "DURATION",
    positive_duration: "DURATION",
    positive_int: "N",
    finite_float: "NUMBER",
    bind_address: "ADDR",
    string: "NAME",
    optional_string: "NAME",
}


@dataclass(frozen=True)
class Config:
    kubeconfig: str | None = cluster(
        "kubeconfig",
        None,
        optional_string,
        "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account)",
        metavar="FILE",
    )
    namespaces: tuple[str, ...] = cluster(
        "namespaces",
        (),
        names,
        "watch only this namespace (repeatable; default: every namespace)",
        flag="--namespace",
        repeatable=True,
        metavar="NAME",
    )
    metrics_bind_address: str = runtime(
        "metricsBindAddress", ":8080", bind_address, "address of /metrics; 0 disables it", metavar="ADDR"
    )
    health_probe_bind_address: str = runtime(
        "healthProbeBindAddress", ":8081", bind_address, "address of /healthz and /readyz; 0 disables them"
    )
    metrics_secure: bool = runtime(
        "metricsSecure",
        False,
        boolean,
        "serve /metrics over HTTPS to clients the API server authenticates and authorizes (needs metricsCertDir)",
    )
    metrics_cert_dir: str | None = runtime(
        "metricsCertDir",
        None,
        optional_string,
        "directory with tls.crt and tls.key for secure metrics (a mounted Secret)",
        metavar="DIR",
    )
    leader_elect: bool = runtime(
        "leaderElect", False, boolean, "elect a leader so that only one replica runs the controllers"
    )
    leader_election_id: str = runtime(
        "leaderElectionID", "kpack-image-builder-leader-election", string, "name of the leader-election Lease"
    )
    leader_election_namespace: str | None = runtime(
        "leaderElectionNamespace",
        None,
        optional_string,
        "namespace of the Lease (default: the pod's own namespace; required outside a cluster)",
    )
    lease_duration: float = runtime(
        "leaseDuration",
        15.0,
        positive_duration,
        "how long a standby waits before taking over a silent leader",
    )
    renew_deadline: float = runtime(
        "renewDeadline", 10.0, positive_duration, "how long the leader tries to renew before giving up"
    )
    retry_period: float = runtime("retryPeriod", 2.0, positive_duration, "how often candidates try the lease")
    workers: int = runtime("workers", 1, positive_int, "concurrent reconciles per controller")
    event_loop: str = runtime(
        "eventLoop",
        "asyncio",
        one_of(*EVENT_LOOPS),
        "the event loop: asyncio (the standard library's) or uvloop (libuv's, about a twentieth less CPU)",
    )
    graceful_shutdown_timeout: float = runtime(
        "gracefulShutdownTimeout",
        30.0,
        duration,
        "time in-flight reconciles get to finish on shutdown (negative: no limit)",
    )
    reconcile_timeout: float = runtime(
        "reconcileTimeout",
        0.0,
        non_negative_duration,
        "cancel and retry a reconcile that runs longer (0: none)",
    )
    rate_limiter: str = runtime(
        "rateLimiter",
        "controller-runtime",
        one_of(*RATE_LIMITER_KINDS),
        "retry backoff: controller-runtime (per key 5ms..1000s) or classic (plus a 10 qps / 100 burst bucket)",
    )
    events: str = runtime(
        "events",
        "all",
        one_of(*RECORDED_TYPES),
        "Kubernetes Events to record: all, warnings (failures only: two fewer API writes per build), none",
    )
    sync_period: float = runtime(
        "syncPeriod", 36000.0, non_negative_duration, "re-deliver every cached object this often (0: never)"
    )
    # As controller-runtime's GetConfig (QPS -1): no client-side throttling by default. The API server's
    # Priority and Fairness paces clients, and its 429s are retried after their Retry-After.
    kube_api_qps: float = client(
        "kubeAPIQPS",
        -1.0,
        finite_float,
        "client-side request rate to the API (0 or less: no client-side limit)",
        flag="--kube-api-qps",  # not the --kube-apiqps the key's spelling would give; as --kube-api-burst
        env="KUBE_API_QPS",
    )
    kube_api_burst: int = client("kubeAPIBurst", 30, positive_int, "client-side request burst to the API")
    log_level: str = logging_(
        "logLevel", "info", log_level, "least important log level printed (zap's names, any case)"
    )
    log_format: str = logging_("logFormat", "json", one_of(*FORMATS), "json (zap fields) or text")

    # ---- the builder (Korifi's keys)
    cluster_builder_name: str = builder(
        "clusterBuilderName", "cf-kpack-cluster-builder", string, "the default kpack ClusterBuilder"
    )
    builder_service_account: str = builder(
        "builderServiceAccount",
        "kpack-service-account",
        string,
        "service account of kpack Images and Builders; its imagePullSecrets read droplets and go into them",
    )
    builder_readiness_timeout: float = builder(
        "builderReadinessTimeout",
        30.0,
        non_negative_duration,
        "how long after a workload's creation a builder that is not ready fails it",
    )
    build_timeout: float = builder(
        "buildTimeout",
        0.0,
        non_negative_duration,
        "how long a kpack Build may run before it is stopped and its workload fails BuildTimeout (0: no limit)",
    )
    build_pod_pending_timeout: float = builder(
        "buildPodPendingTimeout",
        600.0,
        non_negative_duration,
        "how long a build pod that cannot start is waited for before the build is stopped (0: no limit)",
    )
    container_repository_prefix: str | None = builder(
        "containerRepositoryPrefix",
        None,
        repository_prefix,
        "registry and path for droplets and builders, e.g. registry.example.com/cf/ (required)",
        metavar="PREFIX",
    )
    container_registry_type: str = builder(
        "containerRegistryType",
        "",
        one_of("", "ECR"),
        "repository creation before pushes: empty for none (registries that create on push)",
    )
    cf_root_namespace: str = builder(
        "cfRootNamespace", "cf", string, "namespace of the BuilderInfo kpack-image-builder"
    )
    build_cache_mb: int = builder(
        "cfStagingResources.buildCacheMB",
        2048,
        non_negative_int,
        "size of each app's kpack build cache volume, in MiB",
        flag="--build-cache-mb",
        metavar="MB",
    )
    build_cache: str = builder(
        "buildCache",
        "volume",
        one_of(*CACHE_KINDS),
        "each app's kpack build cache: volume (buildCacheMB), registry (an image <prefix><app>-cache) or none",
    )
    build_cache_storage_class: str = builder(
        "buildCacheStorageClass",
        "",
        string,
        "StorageClass of volume caches (empty: the cluster's default, or the class an Image has already)",
    )
    disk_mb: int = builder(
        "cfStagingResources.diskMB",
        0,
        non_negative_int,
        "ephemeral storage requested by build pods, in MB (0: none)",
        flag="--disk-mb",
        metavar="MB",
    )
    memory_mb: int = builder(
        "cfStagingResources.memoryMB",
        0,
        non_negative_int,
        "memory requested by build pods, in MB (0: none)",
        flag="--memory-mb",
        metavar="MB",
    )
    insecure_registries: tuple[str, ...] = registry(
        "insecureRegistries",
        (),
        hosts,
        "registries read over plain HTTP besides loopback and private addresses (repeatable)",
        flag="--insecure-registry",
        repeatable=True,
        metavar="HOST",
    )
    registry_timeout: float = registry(
        "registryTimeout", 30.0, positive_duration, "time limit of each call to a container registry"
    )
    registry_concurrency: int = registry(
        "registryConcurrency",
        8,
        positive_int,
        "registry calls at once per registry host, run beside the workers (a hanging registry holds none)",
    )
    registry_secret_cache_ttl: float = registry(
        "registrySecretCacheTTL",
        30.0,
        non_negative_duration,
        "how long a pull Secret, once read, is used again before it is read anew (0: read for every use);"
        " a registry refusal drops it at once",
    )

    def group(self, name: str) -> dict[str, Any]:
        """The settings of one group (``cluster``, ``runtime``, ``client``, ``logging``, ``builder``,
        ``registry``) by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] == name}

    def builder_settings(self) -> BuilderSettings:
        """The reconcilers' settings: the builder group, and the registry settings they use, by the same
        names."""
        values = {**self.group("registry"), **self.group("builder")}
        wanted = {f.name for f in fields(BuilderSettings)}
        values["container_repository_prefix"] = values["container_repository_prefix"] or ""
        return BuilderSettings(**{k: v for k, v in values.items() if k in wanted})


SETTINGS = {f.metadata["key"]: f for f in fields(Config)}


# ------------------------------------------------------------------ loading
# argparse reads an argument that starts with "-" as an option unless its _negative_number_matcher says it
# is a negative number, and Python 3.11's matcher knows only -1 and -1.5: `--lease-duration -3s` stopped
# with the usage text while `--lease-duration=-3s` reached the setting's own check. Go's flag packages take
# the next argument as the value whatever it is; here anything that starts like a number (-3s, -.5s, -1e3,
# -inf, -nan) is taken as a value, so both forms mean the same, and a mistyped flag (`--workers --bogus`)
# still is not swallowed as one. No option of ours looks like a number, which argparse needs for this.
_NEGATIVE_VALUE = re.compile(r"-(?:\.?\d|inf|nan)", re.IGNORECASE)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser._negative_number_matcher = _NEGATIVE_VALUE
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"YAML file, or a folder of them merged in name order (also ${CONFIG_ENV})",
    )
    for f in fields(Config):
        meta = f.metadata
        kwargs: dict[str, Any] = {
            "dest": f"setting_{f.name}",
            "default": None,
            "help": f"{meta['help']}{_show_default(f.default, meta['parse'])} [${meta['env']}]",
        }
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["repeatable"]:
            kwargs["action"] = "append"
        elif meta["parse"] is boolean:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(meta["flag"], **kwargs)


def _show_default(default: Any, parse: Parser) -> str:
    if default is None or default == ():
        return ""
    if isinstance(default, bool):
        text = str(default).lower()
    elif parse in (duration, non_negative_duration, positive_duration):
        text = format_duration(default)
    else:
        text = str(default)
    return f" (default {text})" if text else ""


def format_duration(seconds: float) -> str:
    """A short Go-style duration: ``30s``, ``10h``, ``1m30s``, ``500ms``."""
    if seconds == 0:
        return "0s"
    sign, rest = ("-" if seconds < 0 else ""), abs(seconds)
    if rest < 1:
        return f"{sign}{rest * 1000:g}ms"
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours:.0f}h" if hours else "") + (f"{minutes:.0f}m" if minutes else "")
    text += f"{secs:g}s" if secs or not text else ""
    return sign + text


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "").split())
        raise ConfigError(
            f"config {path}:{line} not valid YAML{f' ({problem})' if problem else ''}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _config_files(path: Path) -> list[Path]:
    """The file itself, or the non-hidden files of a folder in name order (a mounted ConfigMap's ``..data``
    links are hidden)."""
    if path.is_dir():
        return [c for c in sorted(path.iterdir()) if not c.name.startswith(".") and c.is_file()]
    return [path]


def read_config_files(path: Path) -> dict[str, Any]:
    """A file, or every non-hidden file of a folder in name order (later files win), as Korifi reads its
    controllers config folder."""
    merged: dict[str, Any] = {}
    for file in _config_files(path):
        merged.update(_read_file(file))
    return merged


def _flatten(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` for sections this service owns; other values stay whole.

    A section of ours must be a mapping: anything else would pass for a key we do not use and leave the
    section's settings at their defaults without a word. An empty section (``cfStagingResources:``, null in
    YAML) sets nothing."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        inside = [k.removeprefix(path + ".") for k in SETTINGS if k.startswith(path + ".")]
        if not inside:
            out[path] = value
        elif isinstance(value, dict):
            out.update(_flatten(value, source, path + "."))
        elif value is not None:
            expected = ", ".join(inside[:-1]) + " or " + inside[-1] if len(inside) > 1 else inside[0]
            raise ConfigError(f"{path} (from {source}): expected a mapping with {expected}, got {value!r}")
    return out


def _check_keys(raw: Mapping[str, Any], source: str) -> list[str]:
    """Keys of the file this service does not use; raises for keys that look like ours, misspelt."""
    ignored = []
    for key in raw:
        if key in SETTINGS:
            continue
        section = key.split(".")[0]
        if "." in key and any(k.startswith(section + ".") for k in SETTINGS):
            raise ConfigError(f"config {source}: unknown key {key!r} in section {section!r}")
        close = difflib.get_close_matches(key, list(SETTINGS), n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"config {source}: unknown key {key!r} (did you mean {close[0]!r}?)")
        ignored.append(key)
    return sorted(ignored)


@dataclass(frozen=True)
class Loaded:
    config: Config
    sources: dict[str, str]  # setting key -> where its value came from (defaults are absent)
    ignored_keys: list[str]  # file keys this service does not use (Korifi's other components')

    def log_ignored(self) -> None:
        if self.ignored_keys:
            log.info(
                "ignoring configuration keys this service does not use", extra={"keys": self.ignored_keys}
            )


# Kubernetes puts service links into every pod's environment (unless enableServiceLinks is false): a
# Service named kpack-image-builder, or kpack-image-builder-<anything>, brings KPACK_IMAGE_BUILDER_SERVICE_HOST,
# KPACK_IMAGE_BUILDER_PORT_8080_TCP_ADDR and the like. They are not settings and must not stop the service.
_SERVICE_LINK = re.compile(
    re.escape(ENV_PREFIX)
    + r"(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """The configuration from the file named by ``--config`` (or the environment), the environment and the
    flags in ``args``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []

    config_path = (getattr(args, "config", None) if args else None) or environ.get(CONFIG_ENV)
    if config_path:
        ignored_set: set[str] = set()
        # Files one by one (later ones win), so that an error names the file the value came from.
        for file in _config_files(Path(config_path)):
            source = f"config {file}"
            raw = _flatten(_read_file(file), source)
            ignored_set.update(_check_keys(raw, str(file)))
            for key, value in raw.items():
                if key in SETTINGS:
                    values[key] = value
                    sources[key] = source
        ignored = sorted(ignored_set)

    known_env = {env_name(key): key for key in SETTINGS} | {CONFIG_ENV: ""}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or (name not in known_env and _SERVICE_LINK.fullmatch(name)):
            continue
        if name not in known_env:
            # Judged without the shared prefix, which would make any two names look alike.
            suffixes = [known[len(ENV_PREFIX) :] for known in known_env]
            close = difflib.get_close_matches(name[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.8)
            hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
            raise ConfigError(f"environment: unknown variable {name}{hint}")
        if known_env[name]:
            values[known_env[name]] = value
            sources[known_env[name]] = f"environment {name}"

    if args is not None:
        for f in fields(Config):
            given = getattr(args, f"setting_{f.name}", None)
            if given is not None:
                values[f.metadata["key"]] = given
                sources[f.metadata["key"]] = f"flag {f.metadata['flag']}"

    parsed: dict[str, Any] = {}
    for key, value in values.items():
        f = SETTINGS[key]
        try:
            parsed[f.name] = f.metadata["parse"](value)
        except ValueError as exc:
            raise ConfigError(f"{key} (from {sources[key]}): {exc}") from None
    config = Config(**parsed)
    validate(config, sources)
    return Loaded(config, sources, ignored)


def require_builder_settings(config: Config) -> None:
    """What ``run`` needs beyond a valid file: checked at start, not at load (other commands load too)."""
    if not config.container_repository_prefix:
        raise ConfigError(
            "containerRepositoryPrefix: required (the registry and path droplets are pushed to, "
            "e.g. registry.example.com/cf/)"
        )
    if config.container_registry_type == "ECR":
        raise ConfigError(
            "containerRegistryType: ECR repository creation is not supported by this service yet; "
            "use a registry that creates repositories on push"
        )


def _check_secure_metrics(config: Config) -> None:
    if not config.metrics_cert_dir:
        raise ConfigError(
            "metricsSecure, metricsCertDir: secure metrics need a directory with tls.crt and tls.key"
        )
    missing = [f for f in ("tls.crt", "tls.key") if not (Path(config.metrics_cert_dir) / f).is_file()]
    if missing:
        raise ConfigError(f"metricsCertDir: {config.metrics_cert_dir} has no {' or '.join(missing)}")
    metrics = config.metrics_bind_address.strip()
    if metrics not in ("", "0") and metrics == config.health_probe_bind_address.strip():
        raise ConfigError(
            "metricsSecure, metricsBindAddress, healthProbeBindAddress: secure metrics need an address of "
            "their own (the kubelet probes without a token)"
        )


def validate(config: Config, sources: Mapping[str, str] | None = None) -> None:
    """Rules across settings: client-go's leader-election rules (the lease outlives the renew deadline,
    which outlasts a jittered retry), and one kind of build cache."""
    if config.build_cache_storage_class and config.build_cache != "volume":
        sources = sources or {}
        raise ConfigError(
            f"buildCache, buildCacheStorageClass: a storage class is for a volume cache, got buildCache "
            f"{config.build_cache} ({sources.get('buildCache', 'default')}) and buildCacheStorageClass "
            f"{config.build_cache_storage_class} ({sources.get('buildCacheStorageClass', 'default')})"
        )
    if config.metrics_secure:
        _check_secure_metrics(config)
    if config.leader_elect and not config.lease_duration > config.renew_deadline > 1.2 * config.retry_period:
        sources = sources or {}
        got = ", ".join(
            f"{key} {format_duration(getattr(config, SETTINGS[key].name))} ({sources.get(key, 'default')})"
            for key in ("leaseDuration", "renewDeadline", "retryPeriod")
        )
        raise ConfigError(
            f"leaseDuration, renewDeadline, retryPeriod: need leaseDuration > renewDeadline > 1.2 x retryPeriod, "
            f"got {got}"
        )
