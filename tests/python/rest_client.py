#!/usr/bin/env python3
"""Calls hubmesh's Azure SignalR-style REST API from Python's standard library only (urllib, hmac): the way an
application that is not written in Rust sends into hubmesh hubs. Tokens are made as Azure's documentation says:
a JWT signed with HMAC-SHA256 and the access key, `aud` = the request URL without its query, `exp` in the future.

Usage: rest_client.py BASE_URL ACCESS_KEY HUB CONNECTION_ID USER
  BASE_URL is a node, e.g. http://127.0.0.1:5003. The script sends "from python" to every connection of HUB,
  "to user" to USER and "to connection" to CONNECTION_ID, checks they exist, and checks the refusals: an unknown
  hub (404), a token signed with another key (401), a token for another URL (401), an expired token (401), an
  oversized body (413) and a malformed one (400).

Prints one line per call (`ok` or `FAIL`) and exits 0 when every call got the status it should, 1 otherwise.
Every request has a timeout.
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

TIMEOUT_S = 10


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(key: str, audience: str, lifetime_s: int = 3600) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"aud": audience, "exp": int(time.time()) + lifetime_s}).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def request(base: str, method: str, path: str, bearer: str, body=None) -> int:
    """The status of one request (urllib raises for 4xx and 5xx; those are answers here too)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + bearer)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main(argv) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    base, key, hub, connection, user = argv[1:]
    quote = lambda text: urllib.parse.quote(text, safe="")
    failures = 0

    def check(what: str, method: str, path: str, expected: int, bearer=None, body=None):
        nonlocal failures
        url_path = path.split("?")[0]
        bearer = bearer if bearer is not None else token(key, base + url_path)
        status = request(base, method, path, bearer, body)
        verdict = "ok" if status == expected else "FAIL"
        if status != expected:
            failures += 1
        print(f"{verdict}: {what}: {method} {path} -> {status} (expected {expected})", flush=True)

    send = f"/api/hubs/{quote(hub)}/:send"
    message = lambda text: {"target": "msg", "arguments": [text, 1]}
    check("broadcast", "POST", send + "?api-version=2022-06-01", 202, body=message("from python"))
    check("user send", "POST", f"/api/hubs/{quote(hub)}/users/{quote(user)}/:send", 202, body=message("to user"))
    check("connection send", "POST", f"/api/hubs/{quote(hub)}/connections/{quote(connection)}/:send", 202,
          body=message("to connection"))
    check("connection exists", "HEAD", f"/api/hubs/{quote(hub)}/connections/{quote(connection)}", 200)
    check("user exists", "HEAD", f"/api/hubs/{quote(hub)}/users/{quote(user)}", 200)
    check("no such connection", "HEAD", f"/api/hubs/{quote(hub)}/connections/nope.node-1", 404)
    check("health", "HEAD", "/api/health", 200, bearer="")

    check("unknown hub", "POST", "/api/hubs/no-such-hub/:send", 404, body=message("x"))
    check("bad key", "POST", send, 401, bearer=token("not the access key", base + send), body=message("x"))
    check("wrong audience", "POST", send, 401, bearer=token(key, base + "/api/hubs/other/:send"), body=message("x"))
    check("expired", "POST", send, 401, bearer=token(key, base + send, lifetime_s=-3600), body=message("x"))
    check("oversized", "POST", send, 413, body={"target": "msg", "arguments": ["x" * (1024 * 1024)]})
    check("malformed", "POST", send, 400, body=b"{not json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
