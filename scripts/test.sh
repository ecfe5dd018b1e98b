#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite against a real MediaWiki and Prefect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check wikitune tests benchmarks scripts
.venv/bin/ruff format --check wikitune tests benchmarks scripts
# The slowest tests, so that each run says where its minutes went.
.venv/bin/python -m pytest --durations=25 "$@"
