#!/bin/sh
# Install Debian's Chromium for the consoles' browser tests (tests/browser), which
# Playwright drives at /usr/bin/chromium. Called by `make browsers` (and so by
# `make test`) only when `chromium` is not on the PATH. Needs root or sudo.
set -eu
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
