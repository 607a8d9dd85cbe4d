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
# Tests of one binary run at once and may each find Chromium missing: one installs while the others wait for it
# (flock, from util-linux), then find it there. apt-get also waits for a dpkg lock held by anyone else.
LOCK=/tmp/hubmesh-install-chromium.lock
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock -w 900 9 || { echo "install-chromium: waited 900 s for $LOCK" >&2; exit 2; }
    if [ -x "$CHROMIUM" ]; then
        exit 0
    fi
fi
echo "install-chromium: installing Debian's chromium package with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium
if [ ! -x "$CHROMIUM" ]; then
    echo "install-chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 2
fi
