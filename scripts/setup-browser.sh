#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for the JupyterLab check of `make test` (kernels/tests/browser.rs).
# Installed once per machine with apt-get (as root, or through sudo); nothing is downloaded from elsewhere.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=
elif command -v sudo >/dev/null; then
  SUDO=sudo
else
  echo "setup-browser: chromium and chromium-driver are missing and this user cannot install them:" >&2
  echo "  as root: apt-get install chromium chromium-driver" >&2
  exit 1
fi
echo "setup-browser: installing Debian's chromium and chromium-driver (once per machine)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
