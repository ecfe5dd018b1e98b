#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite against a real MediaWiki and Prefect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check wikitune tests benchmarks scripts
.venv/bin/ruff format --check wikitune tests benchmarks scripts
# The unit tier first (no servers, under a minute), then everything else against the real
# servers, with the slowest tests listed so that each run says where its minutes went. Exit
# status 5 is "no tests selected": arguments may pick tests of one tier only.
.venv/bin/python -m pytest -m unit "$@" || [ $? -eq 5 ]
.venv/bin/python -m pytest -m "not unit" --durations=25 "$@" || [ $? -eq 5 ]
