"""The simulator answers as distribution 2.8 does: the same raw request script runs against both, and the
statuses, the headers a client reads and the bodies must be equal (after replacing what is random:
ports, upload UUIDs, ``_state``). The documented differences (tag-list order and pagination) are left
out of the script."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any

import aiohttp
import pytest

from service.registry import media
from tests.registry.conftest import HAVE_DISTRIBUTION, NO_DISTRIBUTION, PASSWORD, USER, Backend, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not HAVE_DISTRIBUTION, reason=NO_DISTRIBUTION)]

COMPARED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Docker-Content-Digest",
    "Docker-Distribution-Api-Version",
    "Docker-Upload-UUID",
    "Location",
    "Range",
    "Etag",
    "WWW-Authenticate",
    "Link",
    "Accept-Ranges",
    "Cache-Control",
    "X-Content-Type-Options",
    "Allow",
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STATE = re.compile(r"_state=[^&\s]*")
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Script:
    """Runs requests against one registry and records what came back, normalised."""

    def __init__(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        self.session = session
        self.base = f"http://{backend.host}"
        self.host = backend.host
        self.seen: list[dict[str, Any]] = []

    def _normalise(self, text: str) -> str:
        return STATE.sub("_state=STATE", UUID.sub("UUID", text.replace(self.host, "HOST")))

    async def __call__(
        self, step: str, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        url = path if path.startswith("http") else self.base + path
        async with self.session.request(
            method, url, headers=headers, allow_redirects=False, **kwargs
        ) as resp:
            body = await resp.read()
            record: dict[str, Any] = {"step": step, "status": resp.status}
            for name in COMPARED_HEADERS:
                if name in resp.headers:
                    value = self._normalise(resp.headers[name])
                    # an upload's Content-Length would differ only by the _state size
                    record[name] = value
            try:
                record["body"] = json.loads(body) if body else ""
            except ValueError:
                record["body"] = body.decode("utf-8", "replace")
            record["body"] = json.loads(self._normalise(json.dumps(record["body"])))
            self.seen.append(record)
            return resp


async def run_script(run: Script, repo: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"a": "b"}}}).encode()
    layer = b"a layer"
    v2 = f"/v2/{repo}"
    await run("ping anonymous", "GET", "/v2/", auth=False)
    await run("ping wrong password", "GET", "/v2/", auth=False, headers={"Authorization": "Basic eDp5"})
    await run("ping", "GET", "/v2/")
    await run("pull anonymous", "GET", f"{v2}/manifests/latest", auth=False)
    await run("tags of unknown repo", "GET", f"{v2}/tags/list")
    await run("unknown tag", "GET", f"{v2}/manifests/latest", headers={"Accept": media.OCI_MANIFEST})
    await run("unknown blob HEAD", "HEAD", f"{v2}/blobs/{digest(b'none')}")
    await run("unknown blob GET", "GET", f"{v2}/blobs/{digest(b'none')}")
    await run("unknown route", "GET", "/v2/Upper/tags/list")
    await run("wrong method", "POST", f"{v2}/manifests/latest")
    await run("wrong method anonymous", "POST", f"{v2}/manifests/latest", auth=False)
    await run("HEAD tags", "HEAD", f"{v2}/tags/list")
    await run("POST ping", "POST", "/v2/")

    for name, blob in (("config", config), ("layer", layer)):
        start = await run(f"{name} upload start", "POST", f"{v2}/blobs/uploads/")
        location = start.headers["Location"]
        await run(f"{name} upload without digest", "PUT", location, data=b"")
        wrong = {"digest": digest(b"other")}
        await run(f"{name} upload wrong digest", "PUT", location, params=wrong, data=blob)
        await run(f"{name} upload after failure", "PUT", location, params={"digest": digest(blob)}, data=blob)
        start = await run(f"{name} upload restart", "POST", f"{v2}/blobs/uploads/")
        await run(
            f"{name} upload", "PUT", start.headers["Location"], params={"digest": digest(blob)}, data=blob
        )
    chunked = await run("chunked start", "POST", f"{v2}/blobs/uploads/")
    patched = await run("chunked patch", "PATCH", chunked.headers["Location"], data=b"chunk-1")
    await run(
        "chunked finish", "PUT", patched.headers["Location"], params={"digest": digest(b"chunk-1")}, data=b""
    )
    await run("blob HEAD", "HEAD", f"{v2}/blobs/{digest(config)}")
    await run("blob GET", "GET", f"{v2}/blobs/{digest(config)}")
    await run(
        "mount", "POST", f"/v2/{repo}-other/blobs/uploads/", params={"mount": digest(layer), "from": repo}
    )
    await run(
        "mount unknown",
        "POST",
        f"/v2/{repo}-other/blobs/uploads/",
        params={"mount": digest(b"x"), "from": repo},
    )

    oci = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {"mediaType": media.OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": media.OCI_LAYER, "digest": digest(layer), "size": len(layer)}],
        }
    ).encode()
    docker = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media.DOCKER_MANIFEST,
            "config": {"mediaType": media.DOCKER_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": media.DOCKER_LAYER_GZIP, "digest": digest(layer), "size": len(layer)}],
        }
    ).encode()
    missing = oci.replace(digest(layer).encode(), digest(b"missing").encode())
    as_oci = {"Content-Type": media.OCI_MANIFEST}
    await run("manifest by tag", "PUT", f"{v2}/manifests/v1", data=oci, headers=as_oci)
    await run("manifest latest", "PUT", f"{v2}/manifests/latest", data=oci, headers=as_oci)
    await run("manifest by digest", "PUT", f"{v2}/manifests/{digest(oci)}", data=oci, headers=as_oci)
    await run("manifest wrong digest", "PUT", f"{v2}/manifests/{digest(b'x')}", data=oci, headers=as_oci)
    await run(
        "manifest as json",
        "PUT",
        f"{v2}/manifests/bad",
        data=oci,
        headers={"Content-Type": "application/json"},
    )
    await run(
        "manifest as docker",
        "PUT",
        f"{v2}/manifests/bad",
        data=oci,
        headers={"Content-Type": media.DOCKER_MANIFEST},
    )
    await run(
        "manifest as index", "PUT", f"{v2}/manifests/bad", data=oci, headers={"Content-Type": media.OCI_INDEX}
    )
    await run("manifest missing blob", "PUT", f"{v2}/manifests/bad", data=missing, headers=as_oci)
    await run(
        "docker manifest",
        "PUT",
        f"{v2}/manifests/docker",
        data=docker,
        headers={"Content-Type": media.DOCKER_MANIFEST},
    )
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": media.OCI_MANIFEST,
                    "digest": digest(oci),
                    "size": len(oci),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    broken_index = index.replace(digest(oci).encode(), digest(b"nothing").encode())
    await run(
        "index missing child",
        "PUT",
        f"{v2}/manifests/idx",
        data=broken_index,
        headers={"Content-Type": media.OCI_INDEX},
    )
    await run("index", "PUT", f"{v2}/manifests/idx", data=index, headers={"Content-Type": media.OCI_INDEX})

    await run("get without accept", "GET", f"{v2}/manifests/v1")
    await run("get", "GET", f"{v2}/manifests/v1", headers={"Accept": media.MANIFEST_ACCEPT})
    await run("head", "HEAD", f"{v2}/manifests/v1", headers={"Accept": media.MANIFEST_ACCEPT})
    await run("head unknown", "HEAD", f"{v2}/manifests/nope", headers={"Accept": media.MANIFEST_ACCEPT})
    await run("etag", "GET", f"{v2}/manifests/v1", headers={"If-None-Match": f'"{digest(oci)}"'})
    await run("index without accept", "GET", f"{v2}/manifests/idx", headers={"Accept": media.OCI_MANIFEST})
    await run("index", "GET", f"{v2}/manifests/idx", headers={"Accept": media.MANIFEST_ACCEPT})
    await run(
        "docker by digest",
        "GET",
        f"{v2}/manifests/{digest(docker)}",
        headers={"Accept": media.DOCKER_MANIFEST},
    )
    await run(
        "unknown digest", "GET", f"{v2}/manifests/{digest(b'x')}", headers={"Accept": media.OCI_MANIFEST}
    )

    await run("delete by tag", "DELETE", f"{v2}/manifests/v1")
    await run("delete unknown digest", "DELETE", f"{v2}/manifests/{digest(b'x')}")
    await run("delete index", "DELETE", f"{v2}/manifests/{digest(index)}")
    await run("delete docker", "DELETE", f"{v2}/manifests/{digest(docker)}")
    await run("delete", "DELETE", f"{v2}/manifests/{digest(oci)}")
    await run("delete again", "DELETE", f"{v2}/manifests/{digest(oci)}")
    await run("tags after delete", "GET", f"{v2}/tags/list")
    await run("tag after delete", "GET", f"{v2}/manifests/v1", headers={"Accept": media.OCI_MANIFEST})
    await run(
        "digest after delete", "GET", f"{v2}/manifests/{digest(oci)}", headers={"Accept": media.OCI_MANIFEST}
    )
    await run("push again", "PUT", f"{v2}/manifests/again", data=oci, headers=as_oci)
    await run("tags", "GET", f"{v2}/tags/list")
    await run("delete blob", "DELETE", f"{v2}/blobs/{digest(layer)}")
    await run("manifest after blob delete", "PUT", f"{v2}/manifests/again2", data=oci, headers=as_oci)


async def test_sim_answers_like_distribution(distribution_basic: Backend, sim_basic: Backend) -> None:
    repo = f"conformance-{uuid.uuid4().hex[:8]}"
    runs = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for backend in (distribution_basic, sim_basic):
            run = Script(session, backend)
            with deadline():
                await run_script(run, repo)
            runs.append(run.seen)
    real, sim = runs
    assert len(real) == len(sim)
    mismatches = [(r, s) for r, s in zip(real, sim, strict=True) if r != s]
    assert not mismatches, "\n".join(f"distribution: {r}\nsim:          {s}" for r, s in mismatches)


async def test_bearer_challenges_match(distribution_token: Backend, sim_token: Backend) -> None:
    """The token-auth challenges: realm and service, the scope a request needs, and the error."""
    repo = f"conformance-{uuid.uuid4().hex[:8]}"
    runs = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for backend in (distribution_token, sim_token):
            run = Script(session, backend)
            with deadline():
                await run("ping", "GET", "/v2/", auth=False)
                await run("pull", "GET", f"/v2/{repo}/manifests/v1", auth=False)
                await run("delete", "DELETE", f"/v2/{repo}/manifests/{digest(b'x')}", auth=False)
                await run("tags", "GET", f"/v2/{repo}/tags/list", auth=False)
                await run(
                    "bad token",
                    "GET",
                    f"/v2/{repo}/tags/list",
                    auth=False,
                    headers={"Authorization": "Bearer x.y.z"},
                )
            for record in run.seen:
                record["WWW-Authenticate"] = re.sub(
                    r'realm="[^"]*"', 'realm="REALM"', record["WWW-Authenticate"]
                )
            runs.append(run.seen)
    real, sim = runs
    mismatches = [(r, s) for r, s in zip(real, sim, strict=True) if r != s]
    assert not mismatches, "\n".join(f"distribution: {r}\nsim:          {s}" for r, s in mismatches)
    assert (
        real[1]["WWW-Authenticate"]
        == f'Bearer realm="REALM",service="test-registry",scope="repository:{repo}:pull"'
    )
