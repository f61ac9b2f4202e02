#!/usr/bin/env bash
# The test command: set up (quick when cached), then the unit and KVM tiers. Extra arguments go
# to pytest. VMMD_REQUIRE_KVM=1 turns every KVM skip into a failure (CI sets it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/setup.sh")
cd "$repo"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "${@:--q}"
