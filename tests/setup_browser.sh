#!/bin/sh
# Installs the browser that tests/test_serve_browser.py drives: Debian's chromium and
# chromium-driver, from the distribution's own package registry. Does nothing when both are there.
# Run as root (CI) or with sudo available. Playwright (pip, the dev extra) drives /usr/bin/chromium;
# never `playwright install`, which downloads a browser of its own.
set -eu
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser.sh: no apt-get here; install chromium and chromium-driver (/usr/bin/chromium) yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
echo "setup_browser.sh: installing chromium and chromium-driver with apt-get" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
test -x /usr/bin/chromium
