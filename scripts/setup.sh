#!/usr/bin/env bash
# Installs what vmmd needs on a Debian machine, cached outside the repo: Debian packages, a
# virtualenv with the native core built into it, and the emulated KVM hosts (hosts/provision.sh).
# Idempotent; a second run with nothing changed takes a few seconds. Prints the virtualenv.
#   VMMD_CACHE   where everything goes (default ~/.cache/vmmd)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${VMMD_CACHE:-$HOME/.cache/vmmd}
venv=$cache/venv
mkdir -p "$cache"
log() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages: only asked for when something is missing ---
# libseccomp2: the worker's filter; systemd: systemd-analyze checks deploy/vmmd.service;
# acpica-tools (iasl) and device-tree-compiler (dtc) check the boot tables in tests/unit/test_boot.py
# clang and libclang-rt-dev (libFuzzer): the virtio fuzz targets in tests/unit/test_virtio_fuzz.py
# passt: the MicroVMs' user-mode network stack (docs/network.md)
# skopeo: pulls FROM base images (registries, OCI layouts, docker-archives) into the image store
# umoci: unpacks a base image's layers (whiteouts, owners, modes) into a root directory
# docker-registry: the registry the tests and the demo run on loopback (docs/images.md)
# mmdebstrap: builds the tests' and the demo's Debian base images
# qemu-user-static, binfmt-support, arch-test: run an arm64 base's maintainer scripts on amd64
debs=(gcc libc6-dev binutils make python3 python3-venv python3-dev libseccomp2 systemd
      acpica-tools device-tree-compiler clang libclang-rt-dev passt
      skopeo umoci docker-registry mmdebstrap qemu-user-static binfmt-support arch-test)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# a python3 from elsewhere (pyenv) brings its own venv and headers
if command -v python3 >/dev/null && python3 -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
    missing=($(printf '%s\n' "${missing[@]}" | grep -v -x -e python3 -e python3-venv -e python3-dev || true))
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python: a virtualenv in the cache, rebuilt when the project's build inputs change ---
stamp=$venv/.vmmd-stamp
want=$(cat "$repo/pyproject.toml" "$repo/setup.py" | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "preparing the virtualenv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    "$venv/bin/pip" install -q setuptools wheel cffi grpcio-tools
    "$venv/bin/pip" install -q --no-build-isolation -e "$repo[test]"
    echo "$want" > "$stamp"
fi

# --- the native core: rebuilt in place whenever a C file or header is newer than the module ---
so=$(ls "$repo"/vmmd/_native*.so 2>/dev/null | head -n1 || true)
if [ -z "$so" ] || [ -n "$(find "$repo/native" -newer "$so" -type f | head -n1)" ]; then
    log "building the native core"
    (cd "$repo" && "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
fi
# the gRPC API's Python code (vmmd/v1/), generated from protos/ whenever a .proto is newer
gen=$repo/vmmd/v1/__init__.py
if [ ! -f "$gen" ] || [ -n "$(find "$repo/protos" -name '*.proto' -newer "$gen" | head -n1)" ]; then
    log "generating the gRPC API code"
    "$venv/bin/python" "$repo/protos/build.py" "$repo"
fi
# the editable install must point at this checkout (CI clones to a fresh path)
if ! (cd / && "$venv/bin/python" -c 'import vmmd, sys; sys.exit(0 if vmmd.__file__.startswith(sys.argv[1]) else 1)' "$repo/vmmd") 2>/dev/null; then
    log "pointing the virtualenv at $repo"
    "$venv/bin/pip" install -q --no-build-isolation --no-deps -e "$repo"
fi
# a second gRPC client from other tooling (tests/daemon/test_grpc_js.py): grpc-js from npm
node_dir=$cache/node
if [ ! -d "$node_dir/node_modules/@grpc/grpc-js" ] || [ ! -d "$node_dir/node_modules/@grpc/proto-loader" ]; then
    if ! command -v npm >/dev/null; then      # a node from elsewhere brings its own npm
        log "installing Debian packages: nodejs npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    log "installing @grpc/grpc-js and @grpc/proto-loader into $node_dir"
    mkdir -p "$node_dir"
    npm install --silent --no-save --prefix "$node_dir" @grpc/grpc-js@1 @grpc/proto-loader@0.7 >/dev/null
fi
# the emulated KVM hosts for real Linux guests (tests/e2e); VMMD_SKIP_HOSTS=1 leaves them out
if [ "${VMMD_SKIP_HOSTS:-0}" != 1 ]; then
    "$repo/hosts/provision.sh" >/dev/null
fi
echo "$venv"
