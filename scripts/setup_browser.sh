#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/browser), from Debian's packages: no npm, no
# downloaded browser builds. Pinned to the version the tests were written against; when Debian's
# security archive has moved past it, the current bookworm build is installed and its version printed.
set -euo pipefail
PIN="150.0.7871.100-1~deb12u1"
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup_browser.sh: Chromium is missing and installing it needs root: sudo apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "chromium=$PIN" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "chromium=$PIN" >/dev/null 2>&1 || {
    echo "setup_browser.sh: chromium=$PIN is no longer in the archive; installing bookworm's current build" >&2
    apt-get install -y -q --no-install-recommends chromium >/dev/null
  }
}
chromium --version
