#!/usr/bin/env bash
# The main job, as far as the landed issues reach: set up, then boot a guest, snapshot it, and
# launch copies from the snapshot with both restore backends, printing what each step took.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/setup.sh")
cd "$repo"
exec "$venv/bin/python" scripts/demo.py "$@"
