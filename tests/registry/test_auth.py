"""Keychain matching, table-driven from the test cases of go-containerregistry's ``authn/kubernetes`` (the
keychain Korifi uses) and kubelet's ``credentialprovider``, plus how pull secrets are read."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from service.registry import ANONYMOUS, Credentials, Keychain, KeychainError, auth
from service.registry.auth import glob_match
from service.registry.reference import Registry


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dockerconfigjson(auths: dict[str, Any], name: str = "secret") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))},
    }


def dockercfg(auths: dict[str, Any], name: str = "secret") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "type": "kubernetes.io/dockercfg",
        "data": {".dockercfg": b64(json.dumps(auths))},
    }


def user(name: str) -> dict[str, str]:
    return {"username": name, "password": name + "-pw"}


def resolved(keychain: Keychain, image: str | Registry) -> str | None:
    creds = keychain.resolve(image)
    return None if creds == ANONYMOUS else creds.username


# (secrets as (key, username) in order, image, expected username or None for anonymous)
CASES: list[tuple[str, list[tuple[str, str]], str | Registry, str | None]] = [
    # TestAuthPathMatching: longer (reverse-sorted) keys first, plain string prefixes on the path
    (
        "registry",
        [("fake.registry.io", "root"), ("fake.registry.io/nested", "nested")],
        Registry("fake.registry.io"),
        "root",
    ),
    (
        "root",
        [
            ("fake.registry.io", "root"),
            ("fake.registry.io/nested", "nested"),
            ("fake.registry.io/nested/repo", "leaf"),
            ("fake.registry.io/par", "partial"),
        ],
        "fake.registry.io/other",
        "root",
    ),
    (
        "nested",
        [
            ("fake.registry.io", "root"),
            ("fake.registry.io/nested", "nested"),
            ("fake.registry.io/nested/repo", "leaf"),
            ("fake.registry.io/par", "partial"),
        ],
        "fake.registry.io/nested",
        "nested",
    ),
    (
        "leaf",
        [
            ("fake.registry.io", "root"),
            ("fake.registry.io/nested", "nested"),
            ("fake.registry.io/nested/repo", "leaf"),
            ("fake.registry.io/par", "partial"),
        ],
        "fake.registry.io/nested/repo",
        "leaf",
    ),
    (
        "leaf-deeper",
        [
            ("fake.registry.io", "root"),
            ("fake.registry.io/nested", "nested"),
            ("fake.registry.io/nested/repo", "leaf"),
            ("fake.registry.io/par", "partial"),
        ],
        "fake.registry.io/nested/repo/dirt",
        "leaf",
    ),
    (
        "partial-prefix",
        [
            ("fake.registry.io", "root"),
            ("fake.registry.io/nested", "nested"),
            ("fake.registry.io/nested/repo", "leaf"),
            ("fake.registry.io/par", "partial"),
        ],
        "fake.registry.io/partial",
        "partial",
    ),
    # TestAuthHostNameVariations: subdomains are distinct hosts
    (
        "subdomain",
        [("fake.registry.io", "root"), ("1.fake.registry.io", "sub")],
        "1.fake.registry.io/app",
        "sub",
    ),
    (
        "other-subdomain",
        [("fake.registry.io", "root"), ("1.fake.registry.io", "sub")],
        "2.fake.registry.io/app",
        None,
    ),
    # TestAuthSpecialPathsIgnored: /v1/ and /v2/ mean the host
    (
        "v1-path",
        [("https://fake.registry.io/v1/", "root"), ("https://fake2.registry.io/v2/", "root2")],
        "fake.registry.io/repo",
        "root",
    ),
    (
        "v2-path",
        [("https://fake.registry.io/v1/", "root"), ("https://fake2.registry.io/v2/", "root2")],
        "fake2.registry.io/repo",
        "root2",
    ),
    ("v2-subpath", [("https://fake.registry.io/v2/team", "team")], "fake.registry.io/team/app", "team"),
    (
        "v1-no-slash",
        [("https://fake.registry.io/v1", "v1")],
        "fake.registry.io/app",
        None,
    ),  # path "/v1" stays
    # TestAuthDockerRegistry and Docker Hub's traditional key
    ("hub-host", [("index.docker.io", "hub")], "ubuntu", "hub"),
    ("hub-namespace", [("index.docker.io", "hub")], "knative/serving", "hub"),
    ("hub-v1", [("https://index.docker.io/v1/", "hub")], "docker.io/library/ubuntu", "hub"),
    ("hub-alias-key", [("docker.io", "alias")], "ubuntu", None),  # 2 labels vs index.docker.io's 3
    # TestAuthWithGlobs: per-label globs
    ("glob", [("*.registry.io", "glob")], "fake.registry.io/repo", "glob"),
    ("glob-registry-only", [("*.registry.io", "glob")], Registry("blah.registry.io"), "glob"),
    ("glob-depth", [("*.registry.io", "glob")], "a.b.registry.io/repo", None),
    ("glob-not-root", [("*.registry.io", "glob")], "registry.io/repo", None),
    ("glob-class", [("registry-[0-9].example.com", "class")], "registry-7.example.com/app", "class"),
    ("glob-question-is-a-query", [("?.example.com", "q")], "r.example.com/app", None),  # Go's URL parse
    ("glob-bad-pattern", [("a[.example.com", "bad")], "a[.example.com/app", None),
    # ports must be equal; no port only matches no port (TestAuthWithPort)
    ("port", [("fake.registry.io:5000", "port")], "fake.registry.io:5000/repo", "port"),
    ("port-mismatch", [("fake.registry.io:5000", "port")], "fake.registry.io:1000/repo", None),
    ("port-missing-in-key", [("fake.registry.io", "noport")], "fake.registry.io:5000/repo", None),
    ("ip-port", [("http://127.0.0.1:5000", "local")], "127.0.0.1:5000/cf/droplets", "local"),
    # schemes are stripped; kubelet's gitlab/azure examples (TestKubernetesAuth)
    ("gitlab-http", [("http://registry.gitlab.com", "g")], "registry.gitlab.com/dprotaso/test/nginx", "g"),
    (
        "gitlab-path",
        [("https://registry.gitlab.com/dprotaso/test", "g")],
        "registry.gitlab.com/dprotaso/test/nginx",
        "g",
    ),
    (
        "gitlab-full",
        [("registry.gitlab.com/dprotaso/test/nginx", "g")],
        "registry.gitlab.com/dprotaso/test/nginx",
        "g",
    ),
    ("azure", [("https://dtestcontainer.azurecr.io/dave", "a")], "dtestcontainer.azurecr.io/dave/nginx", "a"),
    (
        "azure-other-path",
        [("https://dtestcontainer.azurecr.io/dave", "a")],
        "dtestcontainer.azurecr.io/bob/nginx",
        None,
    ),
    # kubelet keyring: "quay.io/coreos" before "quay.io"
    (
        "quay-specific",
        [("quay.io", "general"), ("quay.io/coreos", "coreos")],
        "quay.io/coreos/etcd",
        "coreos",
    ),
    ("quay-general", [("quay.io", "general"), ("quay.io/coreos", "coreos")], "quay.io/other/etcd", "general"),
    # reverse lexicographic order, not length: the exact host sorts before the glob
    (
        "exact-before-glob",
        [("*.example.com", "glob"), ("registry.example.com", "exact")],
        "registry.example.com/app",
        "exact",
    ),
    # equal keys: the first secret wins
    (
        "first-wins",
        [("fake.registry.io", "first"), ("https://fake.registry.io", "second")],
        "fake.registry.io/app",
        "first",
    ),
    ("case-sensitive-host", [("Fake.Registry.io", "upper")], "fake.registry.io/app", None),
]


@pytest.mark.parametrize(("case", "entries", "image", "expected"), CASES, ids=[c[0] for c in CASES])
def test_matching(
    case: str, entries: list[tuple[str, str]], image: str | Registry, expected: str | None
) -> None:
    secrets = [dockerconfigjson({key: user(name)}, name=f"s{i}") for i, (key, name) in enumerate(entries)]
    keychain = Keychain.from_secrets(secrets)
    assert resolved(keychain, image) == expected


def test_both_secret_types_and_others_ignored() -> None:
    keychain = Keychain.from_secrets(
        [
            {
                "type": "Opaque",
                "data": {".dockerconfigjson": b64(json.dumps({"auths": {"a.io": user("opaque")}}))},
            },
            {"type": "kubernetes.io/dockerconfigjson", "data": {}},
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": ""}},
            {"type": "kubernetes.io/dockercfg", "data": {".dockerconfigjson": b64("{}")}},  # wrong key
            dockercfg({"b.io": user("cfg")}),
            dockerconfigjson({"c.io": user("json")}),
        ]
    )
    assert resolved(keychain, "a.io/app") is None
    assert resolved(keychain, "b.io/app") == "cfg"
    assert resolved(keychain, "c.io/app") == "json"
    assert len(keychain) == 2


def test_auth_field_overrides_username_and_password() -> None:
    keychain = Keychain.from_secrets(
        [
            dockerconfigjson(
                {"a.io": {"username": "ignored", "password": "ignored", "auth": b64("alice:s3cr:et")}}
            ),
            dockerconfigjson({"b.io": {"auth": b64("bob:pw").rstrip("=")}}),  # unpadded base64 is accepted
        ]
    )
    alice = keychain.resolve("a.io/app")
    assert (alice.username, alice.password) == ("alice", "s3cr:et")
    assert alice.source == "secret ns/secret"
    bob = keychain.resolve("b.io/app")
    assert (bob.username, bob.password) == ("bob", "pw")


def test_credentials_never_show_the_password() -> None:
    creds = Credentials("alice", "hunter2", source="secret ns/regcred")
    assert "hunter2" not in repr(creds)
    assert "hunter2" not in creds.describe()
    assert creds.describe() == "user 'alice' (from secret ns/regcred)"
    assert creds.basic_authorization() == "Basic " + b64("alice:hunter2")
    assert not creds.anonymous
    assert Credentials("alice").anonymous  # no password: go-containerregistry sends nothing
    assert Credentials("alice").basic_authorization() is None
    assert not Credentials(registry_token="t").anonymous
    assert creds.fingerprint() != Credentials("alice", "other").fingerprint()


def test_case_insensitive_json_keys_like_go() -> None:
    doc = {"Auths": {"a.io": {"Username": "u", "PASSWORD": "p"}}}
    secret = {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64(json.dumps(doc))}}
    creds = Keychain.from_secrets([secret]).resolve("a.io/x")
    assert (creds.username, creds.password) == ("u", "p")


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!!"}},
            "not base64-encoded JSON",
        ),
        (
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64("{")}},
            "not base64-encoded JSON",
        ),
        (
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64("[]")}},
            "must be a JSON object",
        ),
        (dockerconfigjson({"a.io": {"auth": "%%%"}}), "unable to decode auth field: illegal base64 data"),
        (
            dockerconfigjson({"a.io": {"auth": b64("no-colon")}}),
            "must be formatted as base64(username:password)",
        ),
        (dockerconfigjson({"a.io": {"username": 7}}), "field 'username' must be a string"),
        (dockerconfigjson({"bad host/x": user("u")}), "in dockercfg invalid"),
    ],
)
def test_broken_secrets_fail_the_keychain(secret: dict[str, Any], why: str) -> None:
    with pytest.raises(KeychainError) as info:
        Keychain.from_secrets([{"metadata": {"name": "broken", "namespace": "ns"}, **secret}])
    assert why in str(info.value)
    assert "secret ns/broken" in str(info.value) or "secret ns/secret" in str(info.value)


def test_registry_token_and_docker_config() -> None:
    keychain = Keychain.from_docker_config({"auths": {"r.io": {"registrytoken": "tok"}}})
    creds = keychain.resolve("r.io/app")
    assert creds.registry_token == "tok"
    assert not creds.anonymous
    assert Keychain().resolve("r.io/app") is ANONYMOUS


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "anything", True),
        ("reg*", "registry", True),
        ("r?g", "reg", True),
        ("r?g", "regg", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("[^a-c]x", "dx", True),
        ("[c-a]x", "bx", False),  # reversed range: valid, matches nothing
        (r"\*", "*", True),
        (r"\*", "a", False),
        ("[", "[", False),  # malformed
        ("[]a]", "]", False),  # malformed in Go
        ("a[", "a[", False),
        ("exact", "Exact", False),
    ],
)
def test_go_filepath_match(pattern: str, name: str, matches: bool) -> None:
    assert glob_match(pattern, name) is matches


def test_keys_are_parsed_once_not_per_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    keychain = Keychain.from_secrets(
        [
            dockerconfigjson({"*.registry.io": user("glob")}, name="a"),
            dockerconfigjson({"fake.registry.io/team": user("team")}, name="b"),
        ]
    )
    calls: dict[str, int] = {"glob": 0, "url": 0}
    real_glob, real_url = auth._glob_regex, auth._go_parse_url

    def counting_glob(pattern: str) -> Any:
        calls["glob"] += 1
        return real_glob(pattern)

    def counting_url(raw: str) -> Any:
        calls["url"] += 1
        return real_url(raw)

    monkeypatch.setattr(auth, "_glob_regex", counting_glob)
    monkeypatch.setattr(auth, "_go_parse_url", counting_url)
    for _ in range(3):
        assert resolved(keychain, "fake.registry.io/team/app") == "team"
        assert resolved(keychain, "other.registry.io/app") == "glob"
        assert resolved(keychain, "registry.io/app") is None
    assert calls == {"glob": 0, "url": 9}  # only each image is parsed, once per resolve


def _versioned(secret: dict[str, Any], uid: str, version: str) -> dict[str, Any]:
    return {**secret, "metadata": {**secret["metadata"], "uid": uid, "resourceVersion": version}}


def test_secrets_read_from_the_api_give_the_keychain_made_from_the_same_versions() -> None:
    first = _versioned(dockerconfigjson({"a.io": user("alice")}), "uid-kc-1", "10")
    keychain = Keychain.from_secrets([first])
    assert Keychain.from_secrets([dict(first)]) is keychain
    # A write to the Secret is a new resourceVersion: its new content counts at once.
    rewritten = _versioned(dockerconfigjson({"a.io": user("bob")}), "uid-kc-1", "11")
    assert resolved(Keychain.from_secrets([rewritten]), "a.io/app") == "bob"
    # The same name made again is another uid, whatever its resourceVersion.
    recreated = _versioned(dockerconfigjson({"a.io": user("carol")}), "uid-kc-2", "10")
    assert resolved(Keychain.from_secrets([recreated]), "a.io/app") == "carol"
    # Another list of Secrets (one more, or another order) is another keychain.
    other = _versioned(dockerconfigjson({"a.io": user("dave")}, name="other"), "uid-kc-3", "12")
    assert resolved(Keychain.from_secrets([other, first]), "a.io/app") == "dave"
    assert resolved(Keychain.from_secrets([first, other]), "a.io/app") == "alice"


def test_secrets_without_a_resource_version_are_decoded_every_time() -> None:
    secret = dockerconfigjson({"a.io": user("alice")})
    assert Keychain.from_secrets([secret]) is not Keychain.from_secrets([secret])
    unversioned = {**secret, "metadata": {**secret["metadata"], "uid": "uid-kc-4"}}
    keychain = Keychain.from_secrets([unversioned])
    unversioned["data"] = dockerconfigjson({"a.io": user("bob")})["data"]
    assert resolved(Keychain.from_secrets([unversioned]), "a.io/app") == "bob"
    assert resolved(keychain, "a.io/app") == "alice"


def test_broken_secrets_fail_every_time_not_only_the_first() -> None:
    broken = _versioned(dockerconfigjson({"a.io": {"auth": "%%%"}}), "uid-kc-5", "1")
    for _ in range(2):
        with pytest.raises(KeychainError):
            Keychain.from_secrets([broken])
