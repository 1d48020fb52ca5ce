"""The configuration table: value parsers, the file / environment / flag sources and their precedence,
Korifi's shared config file, one-line errors, and the ``run`` command's exit on a bad configuration."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import config
from service.config import Config, ConfigError, Loaded
from service.kube.ratelimit import TokenBucket

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test", exit_on_error=False)
    config.add_flags(p)
    return p


def load(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Load from flags and an explicit environment only (never the test process's own environment)."""
    return config.load(parser().parse_args(argv or []), dict(environ or {}))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, environ)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("2h45m", 9900.0),
        ("1h2m3s4ms5us6ns", 3723.004005006),
        ("3µs", 3e-6),  # MICRO SIGN
        ("3μs", 3e-6),  # GREEK SMALL LETTER MU: Go accepts both
        ("0", 0.0),
        ("-0", 0.0),
        ("-1s", -1.0),
        ("+2s", 2.0),
        ("-1m30s", -90.0),
        (" 10s ", 10.0),
        (30, 30.0),  # a bare number is seconds, from YAML ...
        (1.5, 1.5),
        ("30", 30.0),  # ... or as text from the environment or a flag
        ("-1", -1.0),
        ("2.5", 2.5),
    ],
)
def test_duration_parses_go_durations(text: Any, seconds: float) -> None:
    assert config.duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "text",
    ["abc", "", "-", "s", "1 s", "1.2.3", "--1", "1m 30s", "1x", "1s2", "--1s", "+-1s", "1d", "1e3s", "ms5",
     True, None, float("nan"), float("inf"), "9" * 400 + "h", "9" * 400, "-" + "9" * 400],
)  # fmt: skip
def test_duration_rejects_what_go_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        config.duration(text)


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999), st.booleans())
def test_duration_sums_its_parts(hours: int, minutes: int, seconds: int, millis: int, negative: bool) -> None:
    text = f"{'-' if negative else ''}{hours}h{minutes}m{seconds}s{millis}ms"
    expected = (hours * 3600 + minutes * 60 + seconds + millis / 1000) * (-1 if negative else 1)
    assert config.duration(text) == pytest.approx(expected, abs=1e-9)
    assert config.duration(config.format_duration(expected)) == pytest.approx(expected, abs=1e-9)


def test_duration_sign_rules() -> None:
    assert config.non_negative_duration("0") == 0.0
    assert config.non_negative_duration("1s") == 1.0
    with pytest.raises(ValueError, match="negative"):
        config.non_negative_duration("-1s")
    assert config.positive_duration("1ms") == 0.001
    for bad in ("0", "0s", "-1s"):
        with pytest.raises(ValueError, match="more than 0"):
            config.positive_duration(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
     ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False), (" true ", True)],
)  # fmt: skip
def test_boolean(value: Any, expected: bool) -> None:
    assert config.boolean(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", None, "truee"])
def test_boolean_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        config.boolean(value)


def test_numbers() -> None:
    assert config.positive_int("3") == 3
    assert config.positive_int(7) == 7
    assert config.positive_int(" 4 ") == 4
    for bad in ("0", 0, "-1", "1.5", 2.5, "abc", "", True, None):
        with pytest.raises(ValueError):
            config.positive_int(bad)
    assert config.finite_float("0.5") == 0.5
    assert config.finite_float(10) == 10.0
    assert config.finite_float("1e3") == 1000.0
    assert config.finite_float("-1") == -1.0
    for bad in ("abc", "", True, None):
        with pytest.raises(ValueError):
            config.finite_float(bad)
    for infinite in ("inf", "-inf", "Infinity", "nan", "-nan", "1e999", float("inf"), float("nan")):
        with pytest.raises(ValueError, match="expected a finite number"):
            config.finite_float(infinite)


def test_strings_and_choices() -> None:
    assert config.string("x") == "x"
    assert config.string(12) == "12"
    for bad in (None, True, {"a": 1}, [1]):
        with pytest.raises(ValueError, match="expected a string"):
            config.string(bad)
    assert config.optional_string("") is None
    assert config.optional_string(None) is None
    assert config.optional_string("k") == "k"
    level = config.one_of("debug", "info")
    assert level("info") == "info"
    with pytest.raises(ValueError, match="expected one of debug, info, got 'loud'"):
        level("loud")


def test_namespace_names() -> None:
    assert config.names(["a", "b"]) == ("a", "b")
    assert config.names("a, b,,c ") == ("a", "b", "c")
    assert config.names("") == ()
    assert config.names(None) == ()  # `namespaces:` with no value in YAML
    assert config.names(["a", "a", "b"]) == ("a", "b")
    for bad in ({"a": 1}, 5, "Not_A_Namespace", "a" * 64, "-a", ["ok", None]):
        with pytest.raises(ValueError):
            config.names(bad)


def test_bind_address_values() -> None:
    assert config.bind_address(" :8080 ") == ":8080"
    assert config.bind_address("0") == "0"
    assert config.bind_address("") == ""
    for bad in ("nonsense", ":99999", "8080", ":http"):
        with pytest.raises(ValueError, match="not host:port"):
            config.bind_address(bad)


def test_every_default_parses_to_itself() -> None:
    for f in fields(Config):
        assert f.metadata["parse"](f.default) == f.default, f.metadata["key"]


def test_flag_and_environment_names() -> None:
    flags = [f.metadata["flag"] for f in fields(Config)]
    envs = [config.env_name(key) for key in config.SETTINGS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert config.env_name("metricsBindAddress") == "KPACK_IMAGE_BUILDER_METRICS_BIND_ADDRESS"
    assert config.env_name("leaderElectionID") == "KPACK_IMAGE_BUILDER_LEADER_ELECTION_ID"
    assert config.env_name("kubeAPIQPS") == "KPACK_IMAGE_BUILDER_KUBE_API_QPS"
    assert config.SETTINGS["kubeAPIQPS"].metadata["flag"] == "--kube-api-qps"
    assert config.SETTINGS["kubeAPIBurst"].metadata["flag"] == "--kube-api-burst"
    help_text = parser().format_help()
    assert "--leader-elect [BOOL]" in help_text
    assert "SETTING_" not in help_text  # every flag has a readable metavar
    assert "KPACK_IMAGE_BUILDER_WORKERS" in help_text


# ---------------------------------------------------------------------------------------------- sources
def test_defaults_when_nothing_is_given() -> None:
    loaded = load()
    assert loaded.config == Config()
    assert loaded.sources == {}
    assert loaded.ignored_keys == []
    assert loaded.config.metrics_bind_address == ":8080"
    assert loaded.config.health_probe_bind_address == ":8081"
    assert (loaded.config.lease_duration, loaded.config.renew_deadline, loaded.config.retry_period) == (
        15.0,
        10.0,
        2.0,
    )
    assert loaded.config.graceful_shutdown_timeout == 30.0


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    file = write(
        tmp_path / "config.yaml",
        "workers: 2\nlogLevel: debug\nnamespaces: [from-file]\nleaderElect: true\nsyncPeriod: 1h\n",
    )
    environ = {
        "KPACK_IMAGE_BUILDER_WORKERS": "3",
        "KPACK_IMAGE_BUILDER_LOG_LEVEL": "warn",
        "KPACK_IMAGE_BUILDER_NAMESPACES": "env-a,env-b",
    }
    argv = ["--config", str(file), "--workers", "4", "--namespace", "flag-ns"]

    loaded = load(argv, environ)
    c = loaded.config
    assert c.workers == 4  # flag beats environment and file
    assert c.namespaces == ("flag-ns",)
    assert c.log_level == "warn"  # environment beats file
    assert c.leader_elect is True  # file beats default
    assert c.sync_period == 3600.0
    assert c.log_format == "json"  # default
    assert loaded.sources == {
        "workers": "flag --workers",
        "namespaces": "flag --namespace",
        "logLevel": "environment KPACK_IMAGE_BUILDER_LOG_LEVEL",
        "leaderElect": f"config {file}",
        "syncPeriod": f"config {file}",
    }

    # Peel the layers off one at a time.
    c = load(["--config", str(file)], environ).config
    assert (c.workers, c.namespaces, c.log_level) == (3, ("env-a", "env-b"), "warn")
    c = load(["--config", str(file)]).config
    assert (c.workers, c.namespaces, c.log_level) == (2, ("from-file",), "debug")


def test_config_path_from_environment_and_flag_wins(tmp_path: Path) -> None:
    env_file = write(tmp_path / "env.yaml", "workers: 6\n")
    flag_file = write(tmp_path / "flag.yaml", "workers: 7\n")
    environ = {"KPACK_IMAGE_BUILDER_CONFIG": str(env_file)}
    assert load([], environ).config.workers == 6
    assert load(["--config", str(flag_file)], environ).config.workers == 7


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--leader-elect"], {}, True),  # no value: true, as Go's boolean flags
        (["--leader-elect=false"], {}, False),
        (["--leader-elect", "false"], {}, False),
        (["--leader-elect=true"], {}, True),
        ([], {"KPACK_IMAGE_BUILDER_LEADER_ELECT": "true"}, True),
        (["--leader-elect=false"], {"KPACK_IMAGE_BUILDER_LEADER_ELECT": "true"}, False),
        (["--leader-elect"], {"KPACK_IMAGE_BUILDER_LEADER_ELECT": "false"}, True),
        ([], {}, False),
    ],
)
def test_leader_elect_flag(argv: list[str], environ: dict[str, str], expected: bool) -> None:
    assert load(argv, environ).config.leader_elect is expected


def test_leader_elect_followed_by_another_flag() -> None:
    c = load(["--leader-elect", "--namespace", "a"]).config
    assert c.leader_elect is True
    assert c.namespaces == ("a",)


def test_repeatable_namespace_flag_and_comma_separated_environment() -> None:
    assert load(["--namespace", "a", "--namespace", "b"]).config.namespaces == ("a", "b")
    assert load([], {"KPACK_IMAGE_BUILDER_NAMESPACES": "x, y,,z"}).config.namespaces == ("x", "y", "z")
    assert load([], {"KPACK_IMAGE_BUILDER_NAMESPACES": ""}).config.namespaces == ()


def test_durations_read_alike_from_every_source(tmp_path: Path) -> None:
    for text in ("syncPeriod: 30\n", 'syncPeriod: "30"\n', "syncPeriod: 30s\n", "syncPeriod: 0.5m\n"):
        file = write(tmp_path / "c.yaml", text)
        assert load(["--config", str(file)]).config.sync_period == 30.0, text
    assert load([], {"KPACK_IMAGE_BUILDER_SYNC_PERIOD": "30"}).config.sync_period == 30.0
    assert load(["--sync-period", "30"]).config.sync_period == 30.0
    assert load(["--sync-period", "1m30s"]).config.sync_period == 90.0


def test_negative_graceful_shutdown_timeout_means_no_limit() -> None:
    assert load(["--graceful-shutdown-timeout=-1s"]).config.graceful_shutdown_timeout == -1.0
    assert load(["--graceful-shutdown-timeout", "-1s"]).config.graceful_shutdown_timeout == -1.0
    assert load(["--graceful-shutdown-timeout", "-1"]).config.graceful_shutdown_timeout == -1.0
    environ = {"KPACK_IMAGE_BUILDER_GRACEFUL_SHUTDOWN_TIMEOUT": "-1s"}
    assert load([], environ).config.graceful_shutdown_timeout == -1.0
    assert load(["--graceful-shutdown-timeout", "1m30s"]).config.graceful_shutdown_timeout == 90.0


NEGATIVE_VALUES = ["-3s", "-1", "-1.5", "-.5s", "-1m30s", "-0", "-1e3", "-inf", "-Inf", "-nan"]


def _outcome(argv: list[str]) -> Config | str:
    try:
        return load(argv).config
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize("value", NEGATIVE_VALUES)
def test_a_negative_value_after_a_space_means_what_it_means_after_an_equals_sign(value: str) -> None:
    """argparse took "-3s" after a space for an unknown option and printed its usage text; Go's flag
    packages take it as the value, as ``--flag=-3s`` always was."""
    for f in fields(Config):
        flag = f.metadata["flag"]
        assert _outcome([flag, value]) == _outcome([f"{flag}={value}"]), flag


def test_negative_durations_and_rates_after_a_space() -> None:
    assert config_error(["--lease-duration", "-3s"]) == (
        "leaseDuration (from flag --lease-duration): must be more than 0, got '-3s'"
    )
    assert config_error(["--renew-deadline", "-1s"]) == (
        "renewDeadline (from flag --renew-deadline): must be more than 0, got '-1s'"
    )
    assert load(["--kube-api-qps", "-1"]).config.kube_api_qps == -1.0  # no client-side limit
    assert config_error(["--kube-api-qps", "-inf"]) == (
        "kubeAPIQPS (from flag --kube-api-qps): expected a finite number, got '-inf'"
    )
    assert load(["--namespace", "a", "--sync-period", "-0", "--workers", "2"]).config.workers == 2


def test_a_missing_value_is_still_not_taken_from_the_next_flag() -> None:
    with pytest.raises(argparse.ArgumentError, match="expected one argument"):
        parser().parse_args(["--workers", "--leader-elect"])
    with pytest.raises(argparse.ArgumentError, match="expected one argument"):
        parser().parse_args(["--kubeconfig", "--log-level=debug"])


@pytest.mark.parametrize(
    ("source", "value"),
    [("flag", "inf"), ("flag", "nan"), ("flag", "1e999"), ("environment", "inf"), ("environment", "NaN"),
     ("config", ".inf"), ("config", ".nan"), ("config", "-.inf"), ("config", "inf")],
)  # fmt: skip
def test_kube_api_qps_must_be_finite(tmp_path: Path, source: str, value: str) -> None:
    file = write(tmp_path / "c.yaml", f"kubeAPIQPS: {value}\n")
    env = config.env_name("kubeAPIQPS")
    argv, environ, where = {
        "flag": ([f"--kube-api-qps={value}"], {}, "flag --kube-api-qps"),
        "environment": ([], {env: value}, f"environment {env}"),
        "config": (["--config", str(file)], {}, f"config {file}"),
    }[source]
    message = config_error(argv, environ)
    assert message.startswith(f"kubeAPIQPS (from {where}): expected a finite number, got "), message


def test_every_setting_from_every_source(tmp_path: Path) -> None:
    """One value per setting, set once through each source: all of them reach the Config."""
    certs = tmp_path / "certs"
    write(certs / "tls.crt", "a certificate\n")
    write(certs / "tls.key", "its key\n")
    values = {
        "kubeconfig": ("/tmp/kc", "/tmp/kc"),
        "metricsBindAddress": ("127.0.0.1:9090", "127.0.0.1:9090"),
        "metricsSecure": ("true", True),
        "metricsCertDir": (str(certs), str(certs)),
        "healthProbeBindAddress": ("0", "0"),
        "leaderElect": ("true", True),
        "leaderElectionID": ("my-lease", "my-lease"),
        "leaderElectionNamespace": ("kube-system", "kube-system"),
        "leaseDuration": ("30s", 30.0),
        "renewDeadline": ("20s", 20.0),
        "retryPeriod": ("5s", 5.0),
        "workers": ("8", 8),
        "gracefulShutdownTimeout": ("1m", 60.0),
        "reconcileTimeout": ("500ms", 0.5),
        "rateLimiter": ("classic", "classic"),
        "eventLoop": ("uvloop", "uvloop"),
        "syncPeriod": ("0", 0.0),
        "events": ("warnings", "warnings"),
        "kubeAPIQPS": ("50", 50.0),
        "kubeAPIBurst": ("100", 100),
        "logLevel": ("error", "error"),
        "logFormat": ("text", "text"),
        "clusterBuilderName": ("my-builder", "my-builder"),
        "builderServiceAccount": ("my-account", "my-account"),
        "builderReadinessTimeout": ("1m", 60.0),
        "buildTimeout": ("30m", 1800.0),
        "buildPodPendingTimeout": ("5m", 300.0),
        "containerRepositoryPrefix": ("registry.example.com:5000/cf/", "registry.example.com:5000/cf/"),
        "containerRegistryType": ("ECR", "ECR"),
        "cfRootNamespace": ("root", "root"),
        "cfStagingResources.buildCacheMB": ("4096", 4096),
        "buildCache": ("volume", "volume"),
        "buildCacheStorageClass": ("fast", "fast"),
        "cfStagingResources.diskMB": ("100", 100),
        "cfStagingResources.memoryMB": ("0", 0),
        "insecureRegistries": ("registry.local:5000", ("registry.local:5000",)),
        "registryTimeout": ("5s", 5.0),
        "registryConcurrency": ("3", 3),
        "registrySecretCacheTTL": ("1m", 60.0),
    }
    flag_argv: list[str] = ["--namespace", "ns-a"]
    environ = {config.env_name("namespaces"): "ns-a"}
    yaml_lines = ["namespaces: [ns-a]"]
    for key, (text, _) in values.items():
        flag_argv.append(f"{config.SETTINGS[key].metadata['flag']}={text}")
        environ[config.env_name(key)] = text
        yaml_lines.append(f"{key}: {text!r}")
    file = write(tmp_path / "all.yaml", "\n".join(yaml_lines) + "\n")
    assert set(values) | {"namespaces"} == set(config.SETTINGS)

    for loaded in (load(flag_argv), load([], environ), load(["--config", str(file)])):
        for key, (_, expected) in values.items():
            assert getattr(loaded.config, config.SETTINGS[key].name) == expected, key
        assert loaded.config.namespaces == ("ns-a",)
        assert set(loaded.sources) == set(config.SETTINGS)


# ---------------------------------------------------------------------------------------------- files
def test_folder_is_merged_in_name_order_skipping_hidden_files(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    write(folder / "20-override.yaml", "workers: 5\n")
    write(folder / "10-base.yaml", "workers: 2\nlogLevel: debug\nrateLimiter: classic\n")
    write(folder / ".hidden.yaml", "workers: [this is not valid\n")  # would fail if read
    write(folder / "..2024_01_01/config.yaml", "workers: 99\n")  # a ConfigMap mount's hidden data dir
    write(folder / "sub" / "nested.yaml", "workers: 98\n")  # folders are not descended into
    loaded = load(["--config", str(folder)])
    assert loaded.config.workers == 5
    assert loaded.config.log_level == "debug"
    assert loaded.config.rate_limiter == "classic"
    assert loaded.sources["workers"] == f"config {folder / '20-override.yaml'}"
    assert loaded.sources["logLevel"] == f"config {folder / '10-base.yaml'}"
    assert config.read_config_files(folder) == {"workers": 5, "logLevel": "debug", "rateLimiter": "classic"}


def test_folder_error_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    write(folder / "a.yaml", "workers: 2\n")
    write(folder / "b.yaml", "workers: 0\n")
    message = config_error(["--config", str(folder)])
    assert message == f"workers (from config {folder / 'b.yaml'}): must be at least 1, got 0"


KORIFI_CONFIG = """\
includeKpackImageBuilder: true
includeJobTaskRunner: true
includeStatefulsetRunner: true
builderName: kpack-image-builder
runnerName: statefulset-runner
cfProcessDefaults:
  memoryMB: 1024
  diskQuotaMB: 1024
cfStagingResources:
  buildCacheMB: 2048
  diskMB: 4096
  memoryMB: 1024
cfRootNamespace: cf
containerRegistrySecrets:
- image-registry-credentials
containerRepositoryPrefix: index.docker.io/korifi/
containerRegistryType: ""
clusterBuilderName: cf-kpack-cluster-builder
builderServiceAccount: kpack-service-account
builderReadinessTimeout: 30s
taskTTL: 30d
workloads_tls_secret_name: korifi-workloads-ingress-cert
workloads_tls_secret_namespace: korifi
namespaceLabels: {}
extraVCAPApplicationValues: {}
maxRetainedPackagesPerApp: 5
maxRetainedBuildsPerApp: 5
spaceFinalizerAppDeletionTimeout: 60
networking:
  gatewayNamespace: korifi-gateway
  gatewayName: korifi
experimental:
  managedServices:
    enabled: false
logLevel: debug
"""


def test_korifi_controllers_config_loads_with_its_keys_ignored(tmp_path: Path, caplog: Any) -> None:
    file = write(tmp_path / "korifi-controllers-config.yaml", KORIFI_CONFIG)
    loaded = load(["--config", str(file)])
    assert loaded.config.log_level == "debug"
    assert loaded.config.container_repository_prefix == "index.docker.io/korifi/"
    assert loaded.config.builder_readiness_timeout == 30.0
    assert (loaded.config.build_cache_mb, loaded.config.disk_mb, loaded.config.memory_mb) == (
        2048,
        4096,
        1024,
    )
    shared = {
        "logLevel",
        "cfStagingResources.buildCacheMB",
        "cfStagingResources.diskMB",
        "cfStagingResources.memoryMB",
        "cfRootNamespace",
        "containerRepositoryPrefix",
        "containerRegistryType",
        "clusterBuilderName",
        "builderServiceAccount",
        "builderReadinessTimeout",
    }
    assert loaded.sources == dict.fromkeys(shared, f"config {file}")
    assert loaded.ignored_keys == sorted(
        [
            "includeKpackImageBuilder",
            "includeJobTaskRunner",
            "includeStatefulsetRunner",
            "builderName",
            "runnerName",
            "cfProcessDefaults",
            "containerRegistrySecrets",
            "taskTTL",
            "workloads_tls_secret_name",
            "workloads_tls_secret_namespace",
            "namespaceLabels",
            "extraVCAPApplicationValues",
            "maxRetainedPackagesPerApp",
            "maxRetainedBuildsPerApp",
            "spaceFinalizerAppDeletionTimeout",
            "networking",
            "experimental",
        ]
    )
    with caplog.at_level("INFO", logger="service.config"):
        loaded.log_ignored()
    [record] = caplog.records
    assert record.keys == loaded.ignored_keys  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("metricBindAddress", "metricsBindAddress"),
        ("healthProbeBindAdress", "healthProbeBindAddress"),
        ("Workers", "workers"),
        ("logFromat", "logFormat"),
    ],
)
def test_misspelt_key_is_an_error_with_a_suggestion(tmp_path: Path, key: str, suggestion: str) -> None:
    file = write(tmp_path / "c.yaml", f"{key}: ':9090'\n")
    message = config_error(["--config", str(file)])
    assert message == f"config {file}: unknown key {key!r} (did you mean {suggestion!r}?)"


def test_invalid_yaml(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "workers: 2\nnamespaces: [a, b\n")
    message = config_error(["--config", str(file)])
    assert message.startswith(f"config {file}: line ")
    assert "not valid YAML" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("hello\n", "str"), ("42\n", "int")])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    file = write(tmp_path / "c.yaml", text)
    assert config_error(["--config", str(file)]) == (
        f"config {file}: expected a mapping of keys to values, got {kind}"
    )


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "# nothing here\n")
    assert load(["--config", str(file)]).config == Config()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert config_error(["--config", str(missing)]) == f"config {missing}: No such file or directory"
    environ = {"KPACK_IMAGE_BUILDER_CONFIG": str(missing)}
    assert config_error([], environ) == f"config {missing}: No such file or directory"


def test_file_that_is_not_text(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_bytes(b"workers: \xff\xfe\n")
    assert config_error(["--config", str(file)]) == f"config {file}: not UTF-8 text (byte 9)"


def test_bad_values_name_the_setting_and_its_source(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "syncPeriod: abc\n")
    assert config_error(["--config", str(file)]) == (
        f"syncPeriod (from config {file}): expected a duration such as 30s or 1m30s, got 'abc'"
    )
    assert config_error([], {"KPACK_IMAGE_BUILDER_WORKERS": "zero"}) == (
        "workers (from environment KPACK_IMAGE_BUILDER_WORKERS): expected a whole number, got 'zero'"
    )
    assert config_error(["--workers", "0"]) == "workers (from flag --workers): must be at least 1, got 0"
    assert config_error(["--log-level", "loud"]) == (
        "logLevel (from flag --log-level): expected one of debug, info, warn, error, got 'loud'"
    )
    assert config_error(["--metrics-bind-address", "nonsense"]).startswith(
        "metricsBindAddress (from flag --metrics-bind-address): bind address 'nonsense' is not host:port"
    )
    assert config_error(["--reconcile-timeout=-1s"]) == (
        "reconcileTimeout (from flag --reconcile-timeout): must not be negative, got '-1s'"
    )
    mapping = write(tmp_path / "m.yaml", "leaderElectionID: {a: 1}\n")
    assert config_error(["--config", str(mapping)]) == (
        f"leaderElectionID (from config {mapping}): expected a string, got {{'a': 1}}"
    )


# ---------------------------------------------------------------------------------------------- environment
def test_unknown_environment_variable_is_an_error() -> None:
    assert config_error([], {"KPACK_IMAGE_BUILDER_WORKER": "2"}) == (
        "environment: unknown variable KPACK_IMAGE_BUILDER_WORKER (did you mean KPACK_IMAGE_BUILDER_WORKERS?)"
    )
    assert config_error([], {"KPACK_IMAGE_BUILDER_FROBNICATE": "1"}) == (
        "environment: unknown variable KPACK_IMAGE_BUILDER_FROBNICATE"
    )


def test_other_environment_variables_are_not_ours() -> None:
    environ = {
        "HOME": "/root",
        "KPACK_OTHER": "x",
        "KUBECONFIG": "/nowhere",
        "kpack_image_builder_workers": "0",
    }
    assert load([], environ).config == Config()


def test_kubernetes_service_links_are_not_settings() -> None:
    """A Service named kpack-image-builder(-...) in the pod's namespace injects these into the pod."""
    environ = {
        "KPACK_IMAGE_BUILDER_SERVICE_HOST": "10.0.0.7",
        "KPACK_IMAGE_BUILDER_SERVICE_PORT": "8080",
        "KPACK_IMAGE_BUILDER_SERVICE_PORT_METRICS": "8080",
        "KPACK_IMAGE_BUILDER_PORT": "tcp://10.0.0.7:8080",
        "KPACK_IMAGE_BUILDER_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "KPACK_IMAGE_BUILDER_PORT_8080_TCP_PROTO": "tcp",
        "KPACK_IMAGE_BUILDER_PORT_8080_TCP_PORT": "8080",
        "KPACK_IMAGE_BUILDER_PORT_8080_TCP_ADDR": "10.0.0.7",
        "KPACK_IMAGE_BUILDER_METRICS_SERVICE_HOST": "10.0.0.8",
        "KPACK_IMAGE_BUILDER_METRICS_PORT_8443_UDP_ADDR": "10.0.0.8",
        "KPACK_IMAGE_BUILDER_WORKERS": "3",
    }
    assert load([], environ).config.workers == 3


# ---------------------------------------------------------------------------------------------- cross-setting rule
@pytest.mark.parametrize(
    ("lease", "renew", "retry", "ok"),
    [
        ("15s", "10s", "2s", True),
        ("10s", "10s", "2s", False),  # lease must outlive the renew deadline
        ("9s", "10s", "2s", False),
        ("15s", "6s", "5s", False),  # renew deadline must outlast 1.2 x retry period
        ("15s", "6.1s", "5s", True),
        ("15s", "2.4s", "2s", False),  # exactly 1.2 x is not enough
        ("15s", "2401ms", "2s", True),
        ("1m", "30s", "3s", True),
    ],
)
def test_leader_election_timing_rule(lease: str, renew: str, retry: str, ok: bool) -> None:
    argv = [
        "--leader-elect",
        f"--lease-duration={lease}",
        f"--renew-deadline={renew}",
        f"--retry-period={retry}",
    ]
    if ok:
        assert load(argv).config.renew_deadline == config.duration(renew)
    else:
        message = config_error(argv)
        assert message.startswith(
            "leaseDuration, renewDeadline, retryPeriod: need leaseDuration > renewDeadline > 1.2 x retryPeriod"
        )


def test_leader_election_timing_error_names_sources() -> None:
    message = config_error(
        ["--leader-elect", "--lease-duration", "10s"], {"KPACK_IMAGE_BUILDER_RETRY_PERIOD": "1s"}
    )
    assert message.endswith(
        "got leaseDuration 10s (flag --lease-duration), renewDeadline 10s (default), "
        "retryPeriod 1s (environment KPACK_IMAGE_BUILDER_RETRY_PERIOD)"
    )


def test_leader_election_timing_is_only_checked_when_electing() -> None:
    """As controller-runtime: the timings are the elector's, so without one they are not judged."""
    assert load(["--lease-duration=10s", "--renew-deadline=10s"]).config.lease_duration == 10.0


def test_one_kind_of_build_cache() -> None:
    """A storage class with a registry cache (or none) is a contradiction, stopped at start-up naming both
    keys and where each came from."""
    message = config_error(
        ["--build-cache=registry"], {"KPACK_IMAGE_BUILDER_BUILD_CACHE_STORAGE_CLASS": "fast"}
    )
    assert message == (
        "buildCache, buildCacheStorageClass: a storage class is for a volume cache, got buildCache registry "
        "(flag --build-cache) and buildCacheStorageClass fast (environment "
        "KPACK_IMAGE_BUILDER_BUILD_CACHE_STORAGE_CLASS)"
    )
    assert load(["--build-cache=none"]).config.build_cache == "none"
    assert load(["--build-cache-storage-class=fast"]).config.build_cache_storage_class == "fast"
    assert "expected one of volume, registry, none" in config_error(["--build-cache=disk"])


def test_log_level_accepts_korifi_spellings() -> None:
    assert load(["--log-level=INFO"]).config.log_level == "info"
    assert load(["--log-level=dpanic"]).config.log_level == "error"
    assert "expected one of debug, info, warn, error" in config_error(["--log-level=verbose"])


# ---------------------------------------------------------------------------------------------- the command
def _run_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "service", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--workers", "0"), "kpack-image-builder: workers (from flag --workers): must be at least 1, got 0"),
        (("--config", "{missing}"), "kpack-image-builder: config {missing}: No such file or directory"),
        (
            (),
            "kpack-image-builder: containerRepositoryPrefix: required (the registry and path droplets are "
            "pushed to, e.g. registry.example.com/cf/)",
        ),
        (
            ("--container-repository-prefix", "Registry.Example.com/CF/"),
            "kpack-image-builder: containerRepositoryPrefix (from flag --container-repository-prefix): "
            "'Registry.Example.com/CF/' is not a registry host and path such as registry.example.com/cf/ "
            "(lower case; repository names are appended to it as they are)",
        ),
    ],
)
def test_run_exits_2_with_one_line_on_a_bad_configuration(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    missing = str(tmp_path / "missing.yaml")
    result = _run_command(*(a.format(missing=missing) for a in args))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [expected.format(missing=missing)]


def test_an_unknown_key_in_a_section_of_ours_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "cfStagingResources:\n  buildCacheGB: 2\n")
    assert "unknown key 'cfStagingResources.buildCacheGB' in section 'cfStagingResources'" in config_error(
        ["--config", str(file)]
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [("5", "5"), ("[1, 2]", "[1, 2]"), ('"x"', "'x'"), ("true", "True"), ("[]", "[]"), ("0", "0")],
)
def test_a_section_of_ours_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str, shown: str) -> None:
    """Before, such a section passed for a key of Korifi's other controllers and its settings silently
    kept their defaults."""
    file = write(tmp_path / "c.yaml", f"workers: 2\ncfStagingResources: {text}\n")
    assert config_error(["--config", str(file)]) == (
        f"cfStagingResources (from config {file}): expected a mapping with buildCacheMB, diskMB or memoryMB, "
        f"got {shown}"
    )


def test_a_section_error_names_the_file_of_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "a.yaml", "cfStagingResources: {diskMB: 1}\n")
    bad = write(tmp_path / "conf" / "b.yaml", "cfStagingResources: x\n")
    assert config_error(["--config", str(tmp_path / "conf")]).startswith(
        f"cfStagingResources (from config {bad}):"
    )


@pytest.mark.parametrize(
    "text", ["cfStagingResources:\n", "cfStagingResources: {}\n", "cfStagingResources: ~\n"]
)
def test_an_empty_section_sets_nothing(tmp_path: Path, text: str) -> None:
    loaded = load(["--config", str(write(tmp_path / "c.yaml", text))])
    assert loaded.config == Config()
    assert loaded.sources == {} and loaded.ignored_keys == []


def test_a_wrong_value_inside_a_section_names_the_nested_key(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "cfStagingResources: {diskMB: 5, buildCacheMB: lots}\n")
    assert config_error(["--config", str(file)]) == (
        f"cfStagingResources.buildCacheMB (from config {file}): expected a whole number, got 'lots'"
    )
    nested = write(tmp_path / "n.yaml", "cfStagingResources:\n  memoryMB:\n    limit: 5\n")
    assert config_error(["--config", str(nested)]) == (
        f"cfStagingResources.memoryMB (from config {nested}): expected a whole number, got {{'limit': 5}}"
    )


def test_format_duration() -> None:
    assert config.format_duration(0) == "0s"
    assert config.format_duration(36000) == "10h"
    assert config.format_duration(90) == "1m30s"
    assert config.format_duration(0.5) == "500ms"
    assert config.format_duration(-1) == "-1s"
    assert config.format_duration(3723.5) == "1h2m3.5s"
    assert not math.isnan(config.duration(config.format_duration(1e-3)))


def test_every_setting_is_in_a_group_and_the_builder_group_fills_the_reconcilers_settings() -> None:
    from service.reconcilers.settings import BuilderSettings

    groups = {f.name: f.metadata["group"] for f in fields(config.Config)}
    assert set(groups.values()) == {"cluster", "runtime", "client", "logging", "builder", "registry"}, groups
    # The reconcilers' settings are the builder group's, and the registry settings they use by name.
    reconcilers = {f.name for f in fields(BuilderSettings)}
    assert reconcilers <= set(config.Config().group("builder")) | set(config.Config().group("registry"))
    assert set(config.Config().group("builder")) - reconcilers <= {"container_registry_type"}
    built = replace(
        config.Config(), container_repository_prefix="r.example/cf/", disk_mb=7
    ).builder_settings()
    assert (built.container_repository_prefix, built.disk_mb) == ("r.example/cf/", 7)
    assert config.Config().builder_settings().container_repository_prefix == ""  # unset: not None


def test_no_client_side_throttling_by_default() -> None:
    """As controller-runtime's GetConfig (QPS -1): the API server's Priority and Fairness paces the
    service; a token bucket of client-go's old 20 qps made 1,000 workloads take minutes (issue 10)."""
    qps = load([]).config.kube_api_qps
    assert qps <= 0
    assert not TokenBucket(qps, load([]).config.kube_api_burst).enabled


def test_secure_metrics_need_a_certificate_and_an_address_of_their_own(tmp_path: Path) -> None:
    assert "secure metrics need a directory with tls.crt and tls.key" in config_error(["--metrics-secure"])
    empty = tmp_path / "empty"
    empty.mkdir()
    said = config_error(["--metrics-secure", f"--metrics-cert-dir={empty}"])
    assert said == f"metricsCertDir: {empty} has no tls.crt or tls.key", said
    write(empty / "tls.crt", "x")
    write(empty / "tls.key", "y")
    said = config_error(
        [
            "--metrics-secure",
            f"--metrics-cert-dir={empty}",
            "--metrics-bind-address=:9443",
            "--health-probe-bind-address=:9443",
        ]
    )
    assert "secure metrics need an address of their own" in said


@pytest.mark.parametrize(
    ("choice", "types"), [("all", ("Normal", "Warning")), ("warnings", ("Warning",)), ("none", ())]
)
def test_the_events_setting_chooses_the_types_the_manager_records(
    choice: str, types: tuple[str, ...]
) -> None:
    from service.app import manager_options

    chosen = replace(config.Config(), events=choice)
    assert manager_options(chosen, "me", None).event_types == types


def test_an_unknown_events_choice_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"events.*all.*warnings.*none"):
        load(["--events", "some"])
