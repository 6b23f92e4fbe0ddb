#!/usr/bin/env bash
# Debian's Chromium for the widget's browser tests. Playwright's own browser download fails
# on machines without general internet, so the tests drive this system Chromium instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
