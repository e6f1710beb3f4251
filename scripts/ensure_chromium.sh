#!/usr/bin/env bash
# tests/test_browser.py drives Debian's chromium through Playwright (Playwright never downloads a browser here).
# `make test` runs this first: it installs chromium with apt when it is missing, or says how to.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and this is not a Debian/Ubuntu machine: install chromium (any recent build) so that" >&2
  echo "'chromium' is on PATH, or skip the browser test: make test PYTEST_ARGS='--deselect tests/test_browser.py'" >&2
  exit 1
fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "chromium is missing and installing it needs root: run 'apt-get install chromium' as root" >&2
    exit 1
  fi
  sudo_cmd="sudo"
fi
echo "installing Debian's chromium for tests/test_browser.py (once; about a minute)"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
