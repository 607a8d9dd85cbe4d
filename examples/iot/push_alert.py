#!/usr/bin/env python3
"""Pushes alert(site, text) to a site's dashboards through hubmesh's REST API (Azure SignalR's data-plane API),
with Python's standard library only: what any application that is not written in Rust can do.

Usage: push_alert.py <node URL> <access key> <site> <text>

The token is a JWT signed with HMAC-SHA256 and the access key, its audience the request URL, as Azure documents.
Exits 0 when the node accepted the send (202).
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(key: str, audience: str, lifetime_s: int = 300) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"aud": audience, "exp": int(time.time()) + lifetime_s}).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def main(argv) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    base, key, site, text = argv[1:]
    group = urllib.parse.quote(f"site-{site}", safe="")
    url = f"{base.rstrip('/')}/api/hubs/dashboard/groups/{group}/:send"
    body = json.dumps({"target": "alert", "arguments": [site, text]}).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Authorization", "Bearer " + token(key, url))
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    print(f"POST {url} -> {status}")
    return 0 if status == 202 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
