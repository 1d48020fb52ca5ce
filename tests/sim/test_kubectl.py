"""kubectl against the real ``kpack-image-builder devcluster`` process: an independent client's smoke test.

Everything here goes through the ``kubectl`` binary and a kubeconfig written by the devcluster, so it checks
what the raw-HTTP conformance suite cannot: that a real Kubernetes client (discovery, RESTMapper, table
printing, watch decoding, patch generation) is satisfied by the emulator. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
import pytest

KUBECTL = shutil.which("kubectl")
if KUBECTL is None:
    pytest.skip("kubectl is not on PATH (as root, `make system-deps` installs it)", allow_module_level=True)


def _client_minor() -> int:
    """kubectl's minor version: Debian's kubernetes-client is 1.20, which lacks some newer flags."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=True
    )
    minor = re.match(r"\d+", json.loads(done.stdout)["clientVersion"]["minor"])
    assert minor is not None, done.stdout
    return int(minor[0])


KUBECTL_MINOR = _client_minor()
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 20.0  # seconds for the devcluster to listen and write its kubeconfig
STOP_DEADLINE = 10.0  # seconds for it to exit after SIGTERM
CALL_TIMEOUT = 15.0  # seconds any one kubectl command may take
EVENT_DEADLINE = 10.0  # seconds for a watch to show a change

Obj = dict[str, Any]

GADGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.smoke.example.com
spec:
  group: smoke.example.com
  scope: Namespaced
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
    listKind: GadgetList
    shortNames: [gdg]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def gadgets_yaml(namespace: str) -> str:
    return f"""\
apiVersion: smoke.example.com/v1
kind: Gadget
metadata:
  name: g1
  namespace: {namespace}
  labels: {{tier: gold}}
spec: {{size: 1, color: red, unknown: dropped}}
---
apiVersion: smoke.example.com/v1
kind: Gadget
metadata:
  name: g2
  namespace: {namespace}
  labels: {{tier: silver}}
spec: {{size: 2, color: blue}}
---
apiVersion: smoke.example.com/v1
kind: Gadget
metadata:
  name: g3
  namespace: {namespace}
spec: {{size: 3, color: blue}}
"""


@dataclass
class DevCluster:
    proc: subprocess.Popen[bytes]
    kubeconfig: Path
    home: Path
    log: BinaryIO
    log_path: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["HOME"] = str(self.home)  # kubectl's discovery cache stays private to this cluster
        return env

    def argv(self, *args: str) -> list[str]:
        assert KUBECTL is not None
        return [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT,
            env=self.env(),
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl; it must succeed. Returns its standard output."""
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Obj:
        out: Obj = json.loads(self.ok(*args, "-o", "json"))
        return out

    def stop(self) -> int:
        """SIGTERM, then the exit code (failing the test if it does not exit in time)."""
        try:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE)
                raise AssertionError(f"devcluster did not exit within {STOP_DEADLINE}s of SIGTERM") from None
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


def start_devcluster(workdir: Path) -> DevCluster:
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = workdir / "dev.kubeconfig"
    log_path = workdir / "devcluster.log"
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simcluster",
            "devcluster",
            "--port",
            "0",
            "--kubeconfig-out",
            str(kubeconfig),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cluster = DevCluster(proc, kubeconfig, home, log, log_path)
    # The kubeconfig is written atomically once the server listens: poll for it, with a deadline.
    deadline = time.monotonic() + START_DEADLINE
    while not kubeconfig.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                cluster.stop()
            else:
                log.close()
            raise AssertionError(
                f"devcluster wrote no kubeconfig within {START_DEADLINE}s "
                f"(exit code {proc.returncode}):\n{log_path.read_text()}"
            )
        time.sleep(0.02)
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    dev = start_devcluster(tmp_path_factory.mktemp("devcluster"))
    try:
        yield dev
    finally:
        code = dev.stop()
    assert code == 0, f"devcluster exited {code} on SIGTERM:\n{dev.output()}"


@pytest.fixture(scope="module")
def gadgets(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Gadget CRD, created from a YAML file and waited for until Established."""
    crd = tmp_path_factory.mktemp("crd") / "gadgets.yaml"
    crd.write_text(GADGET_CRD)
    out = cluster.ok("create", "-f", str(crd))
    assert "customresourcedefinition.apiextensions.k8s.io/gadgets.smoke.example.com created" in out
    out = cluster.ok(
        "wait", "--for", "condition=established", "--timeout=10s", "crd/gadgets.smoke.example.com"
    )
    assert "condition met" in out
    return "gadgets.smoke.example.com"


@pytest.fixture
def namespace(cluster: DevCluster, request: pytest.FixtureRequest) -> str:
    name = request.node.name.removeprefix("test_").replace("_", "-")[:50].strip("-")
    assert cluster.ok("create", "namespace", name).strip() == f"namespace/{name} created"
    return name


def create_gadgets(cluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    objects = tmp_path / "gadgets.yaml"
    objects.write_text(gadgets_yaml(namespace))
    # --validate=false: kubectl would refuse g1's unknown field itself; the server is to prune it
    out = cluster.ok("create", "--validate=false", "-f", str(objects))
    assert out.split("\n")[:3] == [f"gadget.smoke.example.com/g{i} created" for i in (1, 2, 3)]


def names(listing: Obj) -> list[str]:
    return sorted(item["metadata"]["name"] for item in listing["items"])


# ---------------------------------------------------------------------------------------------- tests


def test_preloaded_kpack_and_korifi_crds_are_served(cluster: DevCluster) -> None:
    kpack = set(cluster.ok("api-resources", "--api-group=kpack.io", "-o", "name").split())
    assert {
        "builds.kpack.io",
        "builders.kpack.io",
        "clusterbuilders.kpack.io",
        "images.kpack.io",
    } <= kpack
    korifi = set(cluster.ok("api-resources", "--api-group=korifi.cloudfoundry.org", "-o", "name").split())
    assert korifi == {"buildworkloads.korifi.cloudfoundry.org", "builderinfos.korifi.cloudfoundry.org"}
    for plural in ("buildworkloads", "builderinfos", "images.kpack.io", "builds.kpack.io"):
        listing = cluster.json("get", plural, "--all-namespaces")
        assert (listing["kind"], listing["items"]) == ("List", []), plural
    established = cluster.ok(
        "get",
        "crd",
        "buildworkloads.korifi.cloudfoundry.org",
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Established')].status}",
    )
    assert established == "True"
    # A short name and a category resolve through discovery, too.
    assert cluster.json("get", "clstbldr")["items"] == []
    assert cluster.json("get", "kpack", "--all-namespaces")["items"] == []
    assert cluster.run("get", "nosuchthings").returncode != 0


def test_custom_objects_get_and_list(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    g1 = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert g1["apiVersion"] == "smoke.example.com/v1" and g1["kind"] == "Gadget"
    assert g1["spec"] == {"size": 1, "color": "red"}  # the unknown field was pruned by the schema
    assert g1["metadata"]["generation"] == 1 and g1["metadata"]["uid"]
    assert int(g1["metadata"]["resourceVersion"]) > 0

    everything = cluster.json("get", "gadgets", "-n", namespace)
    assert names(everything) == ["g1", "g2", "g3"]
    assert names(cluster.json("get", "gdg", "-n", namespace, "-l", "tier=gold")) == ["g1"]
    assert names(cluster.json("get", "gadgets", "-n", namespace, "-l", "tier in (gold,silver)")) == [
        "g1",
        "g2",
    ]
    assert names(cluster.json("get", "gadgets", "-n", namespace, "-l", "!tier")) == ["g3"]
    silver = cluster.json("get", "gadgets", "--all-namespaces", "-l", "tier=silver")["items"]
    assert (namespace, "g2") in [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in silver]
    assert {o["metadata"]["labels"]["tier"] for o in silver} == {"silver"}
    # Paginated the way kubectl pages: limit and continue.
    assert names(cluster.json("get", "gadgets", "-n", namespace, "--chunk-size=1")) == ["g1", "g2", "g3"]
    # Server-side printing: the CRD's printer column.
    table = cluster.ok("get", "gadgets", "-n", namespace, "-l", "tier").splitlines()
    # (a CRD with printer columns gets no Age column unless it names one, as in apiextensions-apiserver)
    assert table[0].split() == ["NAME", "SIZE"]
    assert [line.split()[:2] for line in table[1:]] == [["g1", "1"], ["g2", "2"]]
    missing = cluster.run("get", "gadget", "nope", "-n", namespace)
    assert missing.returncode != 0
    assert 'gadgets.smoke.example.com "nope" not found' in missing.stderr


def test_patch_merge_json_and_status(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    out = cluster.ok("patch", "gadget", "g1", "-n", namespace, "--type", "merge", "-p", '{"spec":{"size":5}}')
    assert out.strip() == "gadget.smoke.example.com/g1 patched"
    g1 = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert g1["spec"] == {"size": 5, "color": "red"}
    assert g1["metadata"]["generation"] == 2

    ops = [
        {"op": "test", "path": "/spec/color", "value": "red"},
        {"op": "replace", "path": "/spec/color", "value": "green"},
        {"op": "add", "path": "/metadata/labels/extra", "value": "yes"},
    ]
    cluster.ok("patch", "gadget", "g1", "-n", namespace, "--type", "json", "-p", json.dumps(ops))
    g1 = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert g1["spec"]["color"] == "green"
    assert g1["metadata"]["labels"] == {"tier": "gold", "extra": "yes"}
    assert g1["metadata"]["generation"] == 3

    # A failing JSON-patch `test` is refused (422) and changes nothing.
    failing = [{"op": "test", "path": "/spec/color", "value": "red"}]
    refused = cluster.run(
        "patch", "gadget", "g1", "-n", namespace, "--type", "json", "-p", json.dumps(failing)
    )
    assert refused.returncode != 0
    assert "The request is invalid" in refused.stderr
    unchanged = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert unchanged["metadata"]["resourceVersion"] == g1["metadata"]["resourceVersion"]

    # kubectl label / annotate are merge patches too.
    cluster.ok("label", "gadget", "g2", "-n", namespace, "tier=bronze", "--overwrite")
    cluster.ok("annotate", "gadget", "g2", "-n", namespace, "note=hello")
    g2 = cluster.json("get", "gadget", "g2", "-n", namespace)
    assert g2["metadata"]["labels"] == {"tier": "bronze"}
    assert g2["metadata"]["annotations"] == {"note": "hello"}


@pytest.mark.skipif(KUBECTL_MINOR < 27, reason="kubectl before 1.27 has no (beta) --subresource")
def test_patch_status_subresource(cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    cluster.ok(
        "patch",
        "gadget",
        "g1",
        "-n",
        namespace,
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        '{"status":{"phase":"Ready"},"spec":{"size":99}}',
    )
    g1 = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert g1["status"] == {"phase": "Ready"}
    assert g1["spec"]["size"] == 1  # a write to /status ignores the spec
    assert g1["metadata"]["generation"] == 1  # and the status is not part of the generation
    shown = cluster.json("get", "gadget", "g1", "-n", namespace, "--subresource=status")
    assert shown["status"] == {"phase": "Ready"}


def test_delete_with_and_without_finalizers(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    out = cluster.ok("delete", "gadget", "g2", "-n", namespace)
    assert out.strip() == 'gadget.smoke.example.com "g2" deleted'
    assert names(cluster.json("get", "gadgets", "-n", namespace)) == ["g1", "g3"]

    # A finalizer holds the object: deletionTimestamp is set and kubectl can wait for it to go.
    hold = '{"metadata":{"finalizers":["smoke.example.com/hold"]}}'
    cluster.ok("patch", "gadget", "g1", "-n", namespace, "--type", "merge", "-p", hold)
    cluster.ok("delete", "gadget", "g1", "-n", namespace, "--wait=false")
    held = cluster.json("get", "gadget", "g1", "-n", namespace)
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["smoke.example.com/hold"]
    waiting = cluster.run("wait", "--for=delete", "gadget/g1", "-n", namespace, "--timeout=1s")
    assert waiting.returncode != 0 and "timed out" in waiting.stderr  # still there
    release = '[{"op":"remove","path":"/metadata/finalizers"}]'
    cluster.ok("patch", "gadget", "g1", "-n", namespace, "--type", "json", "-p", release)
    # The last finalizer's removal deletes it at once.
    gone = cluster.run("get", "gadget", "g1", "-n", namespace)
    assert gone.returncode != 0 and 'gadgets.smoke.example.com "g1" not found' in gone.stderr
    assert names(cluster.json("get", "gadgets", "-n", namespace)) == ["g3"]

    # Delete by label selector, then everything left.
    cluster.ok("label", "gadget", "g3", "-n", namespace, "doomed=yes")
    out = cluster.ok("delete", "gadgets", "-n", namespace, "-l", "doomed=yes")
    assert out.strip() == 'gadget.smoke.example.com "g3" deleted'
    assert cluster.json("get", "gadgets", "-n", namespace)["items"] == []


async def _read_json_events(stream: anyio.abc.ByteReceiveStream, buffer: bytearray, want: Any) -> list[Obj]:
    """Decode kubectl's concatenated (indented) JSON watch events until ``want(event)`` holds."""
    decoder = json.JSONDecoder()
    seen: list[Obj] = []
    while True:
        text = buffer.decode()
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            try:
                event, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
            pos = end
            seen.append(event)
            if want(event):
                del buffer[: len(text[:pos].encode())]
                return seen
        del buffer[: len(text[:pos].encode())]
        buffer.extend(await stream.receive())


async def kubectl(cluster: DevCluster, *args: str) -> None:
    """Run kubectl from a coroutine (while a watch runs); it must succeed within the deadline."""
    with anyio.fail_after(CALL_TIMEOUT):
        done = await anyio.run_process(cluster.argv(*args), env=cluster.env(), check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr.decode()}"


async def _drain(stream: anyio.abc.ByteReceiveStream) -> str:
    out = bytearray()
    while True:
        try:
            out.extend(await stream.receive())
        except anyio.EndOfStream:
            return out.decode()


@pytest.mark.anyio
async def test_watch_sees_an_update(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    argv = cluster.argv(
        "get", "gadgets", "-n", namespace, "-l", "tier", "--watch", "-o", "json", "--output-watch-events"
    )
    async with await anyio.open_process(argv, env=cluster.env()) as watch:
        assert watch.stdout is not None
        buffer = bytearray()
        try:
            with anyio.fail_after(EVENT_DEADLINE):
                initial = await _read_json_events(
                    watch.stdout, buffer, lambda e: e["object"]["metadata"]["name"] == "g2"
                )
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
                ("ADDED", "g1"),
                ("ADDED", "g2"),
            ]
            resize = '{"spec":{"size":42}}'
            await kubectl(cluster, "patch", "gadget", "g2", "-n", namespace, "--type", "merge", "-p", resize)
            await kubectl(cluster, "delete", "gadget", "g1", "-n", namespace)
            with anyio.fail_after(EVENT_DEADLINE):
                changes = await _read_json_events(watch.stdout, buffer, lambda e: e["type"] == "DELETED")
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in changes] == [
                ("MODIFIED", "g2"),
                ("DELETED", "g1"),
            ]
            assert changes[0]["object"]["spec"]["size"] == 42
            assert int(changes[1]["object"]["metadata"]["resourceVersion"]) > int(
                changes[0]["object"]["metadata"]["resourceVersion"]
            )
        finally:
            watch.terminate()


@pytest.mark.anyio
async def test_table_watch_prints_rows(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    """`kubectl get --watch` without -o asks the server for Tables and prints their rows."""
    create_gadgets(cluster, namespace, tmp_path)
    argv = cluster.argv("get", "gadgets", "-n", namespace, "-l", "tier=gold", "--watch")
    async with await anyio.open_process(argv, env=cluster.env()) as watch:
        assert watch.stdout is not None and watch.stderr is not None
        lines: list[list[str]] = []
        buffer = b""

        async def until_row(size: str) -> None:
            nonlocal buffer
            assert watch.stdout is not None
            while ["g1", size] not in [line[:2] for line in lines]:
                buffer += await watch.stdout.receive()
                *complete, rest = buffer.split(b"\n")
                buffer = rest
                lines.extend(line.decode().split() for line in complete)

        try:
            with anyio.fail_after(EVENT_DEADLINE):
                await until_row("1")
            assert lines[0] == ["NAME", "SIZE"]
            resize = '{"spec":{"size":7}}'
            await kubectl(cluster, "patch", "gadget", "g1", "-n", namespace, "--type", "merge", "-p", resize)
            with anyio.fail_after(EVENT_DEADLINE):
                await until_row("7")
            # Every line is a row of the server's table (the printer column included); headers once.
            assert [line[:2] for line in lines] == [["NAME", "SIZE"], ["g1", "1"], ["g1", "7"]]
        finally:
            watch.terminate()
        with anyio.fail_after(EVENT_DEADLINE):
            errors = await _drain(watch.stderr)
    assert errors == "", errors


def test_describe_lists_the_objects_events(
    cluster: DevCluster, gadgets: str, namespace: str, tmp_path: Path
) -> None:
    create_gadgets(cluster, namespace, tmp_path)
    g1 = cluster.json("get", "gadget", "g1", "-n", namespace)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "g1.polished", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "smoke.example.com/v1",
            "kind": "Gadget",
            "name": "g1",
            "namespace": namespace,
            "uid": g1["metadata"]["uid"],
        },
        "reason": "Polished",
        "message": "the gadget shines",
        "type": "Normal",
        "source": {"component": "smoke-test"},
        "count": 1,
        "firstTimestamp": g1["metadata"]["creationTimestamp"],
        "lastTimestamp": g1["metadata"]["creationTimestamp"],
    }
    cluster.ok("create", "-f", "-", stdin=json.dumps(event))
    # kubectl describe finds an object's events with field selectors on involvedObject.*.
    described = cluster.ok("describe", "gadget", "g1", "-n", namespace)
    rows = [line.split(None, 4) for line in described.splitlines() if "Polished" in line]
    assert len(rows) == 1, described
    row = rows[0]
    assert row[0] == "Normal" and row[1] == "Polished" and row[3] == "smoke-test"
    assert row[4] == "the gadget shines"
    quiet = cluster.ok("describe", "gadget", "g2", "-n", namespace).splitlines()
    assert [line.split() for line in quiet if line.startswith("Events:")] == [["Events:", "<none>"]]
    found = cluster.ok(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=g1,reason=Polished",
        "-o",
        "name",
    )
    assert found.split() == ["event/g1.polished"]


def test_apply_explain_and_validation(cluster: DevCluster, gadgets: str, namespace: str) -> None:
    """With the OpenAPI documents served, kubectl validates, applies and explains as against a real
    server (tests/controlplane/test_kubectl_both.py compares the two); server-side apply is refused."""
    gadget = {
        "apiVersion": "smoke.example.com/v1",
        "kind": "Gadget",
        "metadata": {"name": "a1", "namespace": namespace},
        "spec": {"size": 1},
    }
    assert (
        cluster.ok("apply", "-f", "-", stdin=json.dumps(gadget)).strip()
        == "gadget.smoke.example.com/a1 created"
    )
    gadget["spec"] = {"size": 2, "color": "red"}
    assert (
        cluster.ok("apply", "-f", "-", stdin=json.dumps(gadget)).strip()
        == "gadget.smoke.example.com/a1 configured"
    )
    assert cluster.json("get", "gadget", "a1", "-n", namespace)["spec"] == {"size": 2, "color": "red"}

    # kubectl validates against the schema (the emulator takes no fieldValidation): nothing is sent
    wrong = {**gadget, "spec": {"size": "big"}}
    refused = cluster.run("apply", "-f", "-", stdin=json.dumps(wrong))
    assert refused.returncode != 0 and 'got "string", expected "integer"' in refused.stderr, refused.stderr
    unknown = {**gadget, "spec": {"size": 3, "shape": "round"}}
    refused = cluster.run("apply", "-f", "-", stdin=json.dumps(unknown))
    assert refused.returncode != 0 and 'unknown field "shape"' in refused.stderr, refused.stderr
    assert cluster.json("get", "gadget", "a1", "-n", namespace)["spec"] == {"size": 2, "color": "red"}

    explained = cluster.ok("explain", "gadget.spec")
    assert re.search(r"size\s+<integer>", explained), explained
    assert "Data contains the configuration data" in cluster.ok("explain", "configmap.data")

    ssa = cluster.run("apply", "--server-side", "-f", "-", stdin=json.dumps(gadget))
    assert ssa.returncode != 0
    assert "server-side apply is not implemented by the kpack-image-builder API emulator" in ssa.stderr


def test_devcluster_exits_zero_on_sigterm(tmp_path: Path) -> None:
    dev = start_devcluster(tmp_path)
    try:
        namespaces = dev.ok("get", "namespaces", "-o", "name").split()
        assert namespaces == [
            "namespace/default",
            "namespace/kube-node-lease",
            "namespace/kube-public",
            "namespace/kube-system",
        ]
        server = json.loads(dev.ok("version", "-o", "json"))["serverVersion"]
        assert (server["major"], server["minor"]) == ("1", "31")
    finally:
        code = dev.stop()
    assert code == 0, dev.output()
    assert "devcluster: stopped" in dev.output()
