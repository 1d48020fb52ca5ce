"""Reference parsing against go-containerregistry's ``pkg/name`` behaviour (its own test tables plus the
edge cases Korifi's strings hit), and the ``Build.spec.tags`` helper for registries with a port."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.registry import InvalidReference, parse_reference, parse_repository, tag_of_build_tag
from service.registry.reference import Registry, parse_registry, tags_of_build_tags, valid_authority

D = "sha256:deadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33fdeadb33f"


@pytest.mark.parametrize(
    ("text", "name", "registry", "path", "tag", "digest"),
    [
        # Docker Hub defaulting and the implicit library/ namespace
        (
            "ubuntu",
            "index.docker.io/library/ubuntu:latest",
            "index.docker.io",
            "library/ubuntu",
            "latest",
            None,
        ),
        (
            "library/ubuntu",
            "index.docker.io/library/ubuntu:latest",
            "index.docker.io",
            "library/ubuntu",
            "latest",
            None,
        ),
        (
            "docker.io/nginx:1.25",
            "index.docker.io/library/nginx:1.25",
            "index.docker.io",
            "library/nginx",
            "1.25",
            None,
        ),
        (
            "knative/serving",
            "index.docker.io/knative/serving:latest",
            "index.docker.io",
            "knative/serving",
            "latest",
            None,
        ),
        (
            "namespace/pathcomponent/image",
            "index.docker.io/namespace/pathcomponent/image:latest",
            "index.docker.io",
            "namespace/pathcomponent/image",
            "latest",
            None,
        ),
        # explicit registries: a first part with '.', ':' or exactly 'localhost'
        (
            "gcr.io/project-id/image:w1th-alpha_num3ric.PLUScaps",
            "gcr.io/project-id/image:w1th-alpha_num3ric.PLUScaps",
            "gcr.io",
            "project-id/image",
            "w1th-alpha_num3ric.PLUScaps",
            None,
        ),
        (
            "gcr.io/google.com/g-convoy/hello-world:latest",
            "gcr.io/google.com/g-convoy/hello-world:latest",
            "gcr.io",
            "google.com/g-convoy/hello-world",
            "latest",
            None,
        ),
        ("localhost/testimage:mytag", "localhost/testimage:mytag", "localhost", "testimage", "mytag", None),
        (
            "localhostx/testimage",
            "index.docker.io/localhostx/testimage:latest",
            "index.docker.io",
            "localhostx/testimage",
            "latest",
            None,
        ),
        (
            "domain.with.port:9001/image:latest",
            "domain.with.port:9001/image:latest",
            "domain.with.port:9001",
            "image",
            "latest",
            None,
        ),
        # a port is not a tag: the last ':'-part contains a '/'
        (
            "www.example.test:12345/repo/path",
            "www.example.test:12345/repo/path:latest",
            "www.example.test:12345",
            "repo/path",
            "latest",
            None,
        ),
        (
            "host:5000/repo:b1.20240101.101010",
            "host:5000/repo:b1.20240101.101010",
            "host:5000",
            "repo",
            "b1.20240101.101010",
            None,
        ),
        (
            "127.0.0.1:5000/cf/app-guid-droplets",
            "127.0.0.1:5000/cf/app-guid-droplets:latest",
            "127.0.0.1:5000",
            "cf/app-guid-droplets",
            "latest",
            None,
        ),
        ("[::1]:5000/app:v1", "[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        # ...except without a path: Go takes 'localhost:5000' as Docker Hub's library/localhost at tag 5000
        (
            "localhost:5000",
            "index.docker.io/library/localhost:5000",
            "index.docker.io",
            "library/localhost",
            "5000",
            None,
        ),
        # weak validation lets odd repository paths and tags through
        ("example.com/a//b", "example.com/a//b:latest", "example.com", "a//b", "latest", None),
        ("example.com/a:-dash", "example.com/a:-dash", "example.com", "a", "-dash", None),
        # digests, and tag+digest (the tag is checked, then dropped)
        (
            f"gcr.io/g-convoy/hello-world@{D}",
            f"gcr.io/g-convoy/hello-world@{D}",
            "gcr.io",
            "g-convoy/hello-world",
            None,
            D,
        ),
        (
            f"library/ubuntu@{D}",
            f"index.docker.io/library/ubuntu@{D}",
            "index.docker.io",
            "library/ubuntu",
            None,
            D,
        ),
        (
            f"nginx:latest@{D}",
            f"index.docker.io/library/nginx@{D}",
            "index.docker.io",
            "library/nginx",
            None,
            D,
        ),
        (
            f"example.text:8443/foo/bar:latest@{D}",
            f"example.text:8443/foo/bar@{D}",
            "example.text:8443",
            "foo/bar",
            None,
            D,
        ),
        (f"host:5000/repo@{D}", f"host:5000/repo@{D}", "host:5000", "repo", None, D),
    ],
)
def test_parse_reference(
    text: str, name: str, registry: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.name == name
    assert ref.registry.name == registry
    assert ref.repository.path == path
    assert ref.tag == tag
    assert ref.digest == digest
    assert ref.identifier == (digest or tag)
    assert ref.original == text
    assert str(ref) == name
    # a reference's full name parses back to itself
    assert parse_reference(ref.name).name == name


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "a repository name must be specified"),
        ("gcr.io/project-id/bad_chars:c@n'tuse", "unsupported digest algorithm: n'tuse"),
        ("gcr.io/project-id/wrong-length:white space", "tag can only contain the characters"),
        (
            "gcr.io/project-id/too-many-chars:" + "x" * 129,
            "tag must be between 1 and 128 characters in length",
        ),
        ("library/ubuntu:", "library/ubuntu: must specify a tag name after the colon"),
        ("UPPER/case", "repository can only contain the characters"),
        ("b@char/image", "unsupported digest algorithm: char/image"),
        ("white space", "repository can only contain the characters"),
        ("gcr?com/image", "repository can only contain the characters"),
        ("gcr.io/" + "a" * 256, "repository must be between 1 and 255 characters in length"),
        ("registry:5x/app", "registries must be valid RFC 3986 URI authorities: registry:5x"),
        ("gcr.io/project-id/unknown-alg@unknown:abc123", "unsupported digest algorithm: unknown:abc123"),
        ("gcr.io/project-id/wrong-length@sha256:d34db33fd34db33f", "invalid checksum digest length"),
        ("gcr.io/project-id/missing-digest@", "unsupported digest algorithm"),
        ("repo@sha256:" + ":" * 64, "invalid checksum digest format"),
        ("repo@sha256:" + "sh" * 32, "invalid checksum digest format"),
        (f"repo@{D}@{D}", "exactly one '@' separator"),
        (f"library/nginx:@{D}", "repository can only contain the characters"),
    ],
)
def test_invalid_references(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith(f"could not parse reference {text!r}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("registry", "scheme"),
    [
        # go-containerregistry's TestRegistryScheme table
        ("foo.svc.localhost:1234", "http"),
        ("foo.svc.local:1234", "https"),
        ("registry.local", "https"),
        ("127.0.0.1:1234", "http"),
        ("127.0.0.1", "http"),
        ("127.0.0.1.evil.com", "https"),
        ("my127.0.0.1registry.io", "https"),
        ("localhost:8080", "http"),
        ("gcr.io", "https"),
        ("index.docker.io", "https"),
        ("::1", "http"),
        ("[::1]:5000", "http"),
        ("[2001:db8::1]:5000", "https"),
        ("10.2.3.4:5000", "http"),
        # RFC 1918 (isRFC1918 table) and the rules' edges
        ("172.16.3.4:3000", "http"),
        ("172.32.0.1:3000", "https"),
        ("192.168.3.4", "http"),
        ("10.256.0.0:5000", "https"),
        ("8.8.8.8", "https"),
        ("localhost", "https"),  # only "localhost:" with a port counts
        ("127.0.0.2:5000", "https"),  # only 127.0.0.1, not the whole 127/8
        ("foo.localhost", "http"),
    ],
)
def test_scheme_follows_go_containerregistry(registry: str, scheme: str) -> None:
    assert parse_registry(registry).scheme() == scheme


def test_insecure_registries_use_http() -> None:
    reg = Registry("registry.example.com:5000")
    assert reg.scheme() == "https"
    assert reg.scheme(insecure={"registry.example.com:5000"}) == "http"
    assert reg.scheme(insecure={"registry.example.com"}) == "https"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("gcr.io", True),
        ("gcr.io:9001", True),
        ("localhost:9090", True),
        ("", True),
        ("[2001:db8::1]:5000", True),
        ("host:", True),  # Go accepts an empty port
        ("white space", False),
        ("gcr?com", False),
        ("user@host", False),
        ("host:port", False),
        ("[::1", False),
        ("a%41b", False),
    ],
)
def test_registry_authority_validation(name: str, valid: bool) -> None:
    assert valid_authority(name) is valid


def test_docker_io_alias_and_default() -> None:
    assert parse_registry("docker.io").name == "index.docker.io"
    assert parse_registry("").name == "index.docker.io"
    assert parse_repository("docker.io/ubuntu").name == "index.docker.io/library/ubuntu"
    assert parse_repository("ubuntu").scope("pull") == "repository:library/ubuntu:pull"
    # only the default registry gets library/
    assert parse_repository("gcr.io/ubuntu").path == "ubuntu"


def test_explicit_tag_flag() -> None:
    assert parse_reference("host:5000/repo").explicit_tag is False
    assert parse_reference("host:5000/repo:latest").explicit_tag is True


@pytest.mark.parametrize(
    ("entry", "tag"),
    [
        ("host:5000/repo:b1.20240101.101010", "b1.20240101.101010"),  # Korifi: skipped (three parts)
        ("host:5000/repo", None),  # Korifi: the bogus tag "5000/repo"
        ("registry.example.com/repo:tag", "tag"),
        ("registry.example.com/repo", None),
        ("gcr.io/cf/droplets/app-guid:b3.20240102.030405", "b3.20240102.030405"),
        ("repo:latest", "latest"),
        (f"host:5000/repo@{D}", None),
        ("not a reference", None),
    ],
)
def test_tag_of_build_tag(entry: str, tag: str | None) -> None:
    assert tag_of_build_tag(entry) == tag


def test_tags_of_build_tags_keeps_order_and_drops_untagged() -> None:
    spec_tags = [
        "host:5000/cf/app:b2.20240101.101010",
        "host:5000/cf/app",
        "host:5000/cf/app:b2.20240101.101010",
        "host:5000/cf/app:extra",
    ]
    assert tags_of_build_tags(spec_tags) == ["b2.20240101.101010", "extra"]


@given(
    st.text(
        alphabet=st.sampled_from("abcXYZ019.-_:/@[]% lhost" + "sha256:" + "0123456789abcdef"),
        max_size=80,
    )
)
@settings(max_examples=400, deadline=None)
def test_any_string_parses_or_fails_cleanly(text: str) -> None:
    """Only ``InvalidReference`` escapes, and whatever parses has a full name that parses to itself."""
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        assert "\n" not in str(exc)
        return
    again = parse_reference(ref.name)
    assert (again.name, again.registry, again.repository, again.identifier) == (
        ref.name,
        ref.registry,
        ref.repository,
        ref.identifier,
    )


def test_a_string_is_parsed_once_and_a_bad_one_fails_every_time() -> None:
    ref = parse_reference("registry.example.com/app@sha256:" + "a" * 64)
    assert parse_reference("registry.example.com/app@sha256:" + "a" * 64) is ref
    for _ in range(2):
        with pytest.raises(InvalidReference):
            parse_reference("registry.example.com/App:tag")
