#!/bin/sh
# Installs Debian's Chromium for the browser tests (tests/browser.rs) when /usr/bin/chromium is missing.
# Needs apt-get and root (the test machines run as root). Prints a clear error otherwise.
set -eu
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: $CHROMIUM is missing and apt-get is unavailable; install Debian's chromium package" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-chromium: $CHROMIUM is missing and installing it with apt-get needs root" >&2
    exit 2
fi
echo "install-chromium: installing Debian's chromium package with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
if [ ! -x "$CHROMIUM" ]; then
    echo "install-chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 2
fi
