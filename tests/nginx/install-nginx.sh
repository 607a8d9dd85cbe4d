#!/bin/sh
# Installs Debian's nginx-light for the load-balancer test (tests/nginx.rs) when no nginx is on the PATH.
# Needs apt-get and root (the test machines run as root). Prints a clear error otherwise.
set -eu
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nginx: nginx is missing and apt-get is unavailable; install Debian's nginx-light package" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-nginx: nginx is missing and installing it with apt-get needs root" >&2
    exit 2
fi
echo "install-nginx: installing Debian's nginx-light package with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Only the binary is wanted: no service is started (policy-rc.d refuses it during the install).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
status=0
apt-get install -y -q --no-install-recommends nginx-light || status=$?
rm -f /usr/sbin/policy-rc.d
if [ "$status" != 0 ] || [ ! -x /usr/sbin/nginx ]; then
    echo "install-nginx: apt-get failed (status $status) or /usr/sbin/nginx is still missing" >&2
    exit 2
fi
