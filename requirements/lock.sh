#!/usr/bin/env bash
# Regenerates the image's lock files from pyproject.toml: run it after changing a dependency there.
#
#   requirements/lock.sh            # from the repository root or anywhere
#
# The Dockerfile installs only from these files, with `pip install --require-hashes --only-binary :all:`,
# so a build gets exactly these distributions or fails. uv resolves them (universally: one lock serves
# amd64 and arm64 images) for the images' Python, 3.11, choosing only versions that ship wheels. uv runs
# from a throwaway virtualenv: it is a tool of this script, not a dependency of the project.
#   build.txt  what builds the project's wheel (pyproject.toml's [build-system] requires)
#   image.txt  the service's dependencies: what the service image carries
#   sim.txt    those plus the `sim` extra's, for the demo image (constrained to image.txt's versions)
set -euo pipefail
UV_VERSION=0.13.9
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet "uv==$UV_VERSION"
cd "$root"
compile() {
  "$tmp/venv/bin/uv" pip compile --quiet --universal --python-version 3.11 --only-binary :all: \
    --generate-hashes --custom-compile-command requirements/lock.sh "$@"
}
# From stdin, so the lock's annotations name no temporary file.
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  | compile - -o requirements/build.txt
compile pyproject.toml -o requirements/image.txt
compile pyproject.toml --extra sim -c requirements/image.txt -o requirements/sim.txt
