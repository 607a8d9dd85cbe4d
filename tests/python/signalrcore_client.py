#!/usr/bin/env python3
"""Drives hubmesh with an independent SignalR client: the Python `signalrcore` package (pinned in
requirements.txt), over WebSockets, with the JSON and the MessagePack hub protocols.

Usage: signalrcore_client.py BASE_URL [json|messagepack ...]
  BASE_URL is the test hub server, e.g. http://127.0.0.1:5000 (it serves /testhub and the demo hub at /hub).
  Without protocol names, both protocols run.

Every wait is bounded; a watchdog dumps every thread's stack and exits non-zero if the whole run hangs.
Exits 0 when every scenario passed, 1 when any failed (each failure is printed), 2 on bad usage.

Quirks of signalrcore 1.0.2 that this script works around (all on the client side):
  * `stream()` sends the StreamInvocation before the caller can `subscribe()`, so items that arrive at once
    would be dropped: this script holds the connection's message dispatch while it subscribes.
  * A completion with an error goes to the connection-wide `on_error` callback, not to the invocation's or
    stream's callbacks: this script routes it back by invocation id.
  * `Subject` (client-to-server streams) sends the Invocation without an invocation id, so the server treats
    it as non-blocking and sends no result; over MessagePack it also leaves the invocation id out of the
    array and ends the stream with a Completion that has no result kind (`[3, H, id]`), both malformed.
    The JSON run checks that the plain `Subject` call is accepted; both runs then send the client stream
    with signalrcore's own message classes, completed properly, to check the result.
  * Its MessagePack decoder reads element 5 (the stream ids) of every Invocation, which the protocol makes
    optional; hubmesh writes it always (an empty array), as ASP.NET Core does, so no workaround is needed.
  * `stop()` closes the socket under its blocked receive thread and joins that thread, which wakes only when
    the server next sends something (its keep-alive Ping, up to 15 s later): this script sends a WebSocket
    close frame first and waits for the server's answer.

signalrcore needs no special options against hubmesh: it negotiates (version 0, as it sends no
negotiateVersion), connects with `id=<connectionId>` and sends `"headers"` on its messages.
"""

import faulthandler
import logging
import socket
import struct
import sys
import threading
import time
import traceback
import uuid

from signalrcore.hub.handlers import InvocationHandler
from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.messages.base_message import BaseHeadersMessage
from signalrcore.messages.completion_message import CompletionClientStreamMessage
from signalrcore.messages.invocation_message import InvocationMessage
from signalrcore.messages.message_type import MessageType
from signalrcore.messages.stream_item_message import StreamItemMessage
from signalrcore.protocol.json_hub_protocol import JsonHubProtocol
from signalrcore.protocol.messagepack_protocol import MessagePackHubProtocol
from signalrcore.subject import Subject

# Upper bound on any single wait (connect, a result, a stream, a client method call).
WAIT = 10.0
# Upper bound on the whole run; beyond it the watchdog dumps the stacks and exits.
WATCHDOG = 90.0
# How long to make sure that a connection outside a group receives nothing.
QUIET = 0.5

PROTOCOLS = {
    "json": JsonHubProtocol,
    "messagepack": MessagePackHubProtocol,
}

THROW_PREFIX = "An unexpected error occurred invoking 'ThrowException' on the server. InvalidOperationException: "


class ScenarioError(Exception):
    """A scenario's check failed."""


class HubInvocationError(Exception):
    """The server completed an invocation with an error."""


def check(condition, message):
    if not condition:
        raise ScenarioError(message)


class Pending:
    """The outcome of one invocation or stream, filled in from signalrcore's receive thread."""

    def __init__(self, what):
        self.what = what
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.items = []

    def complete(self, result=None, error=None):
        self.result = result
        self.error = error
        self.done.set()

    def wait(self):
        if not self.done.wait(WAIT):
            raise ScenarioError(f"{self.what}: no completion within {WAIT} s")
        if self.error is not None:
            raise HubInvocationError(self.error)
        return self.result


class MessagePackStreamCompletion(BaseHeadersMessage):
    """A void Completion for a client stream, `[3, H, id, 2]`: signalrcore's own lacks the result kind."""

    def __init__(self, invocation_id):
        super().__init__(MessageType.completion.value)
        self.invocation_id = invocation_id
        self.result_kind = 2


class Client:
    """One signalrcore hub connection, with bounded waits and per-invocation error routing."""

    def __init__(self, base_url, path, protocol, label):
        self.label = label
        self.protocol_name = protocol
        self.url = base_url.rstrip("/") + path
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.pending = {}
        self.unrouted_errors = []
        self.received = {}
        self.received_changed = threading.Condition()
        # Held while a stream is set up, so that its items cannot be dispatched before `subscribe`.
        self.dispatch_lock = threading.Lock()

        hub_protocol = (
            MessagePackHubProtocol() if protocol == "messagepack" else JsonHubProtocol()
        )
        self.connection = (
            HubConnectionBuilder()
            .with_url(self.url, options={"verify_ssl": False})
            .with_hub_protocol(hub_protocol)
            .build()
        )
        self.connection.on_open(self.opened.set)
        self.connection.on_close(self.closed.set)
        self.connection.on_error(self._on_error)
        dispatch = self.connection.on_message

        def dispatch_serialized(messages):
            with self.dispatch_lock:
                return dispatch(messages)

        self.connection.on_message = dispatch_serialized

    def _on_error(self, message):
        invocation_id = getattr(message, "invocation_id", None)
        pending = self.pending.pop(invocation_id, None)
        if pending is not None:
            pending.complete(error=getattr(message, "error", None) or repr(message))
        else:
            self.unrouted_errors.append(repr(getattr(message, "error", message)))

    def listen(self, target):
        """Records every call of client method `target`; call before `start`."""
        self.received.setdefault(target, [])

        def on_call(arguments):
            with self.received_changed:
                self.received[target].append(arguments)
                self.received_changed.notify_all()

        self.connection.on(target, on_call)

    def start(self):
        self.connection.start()
        if not self.opened.wait(WAIT):
            raise ScenarioError(f"{self.label}: {self.url} did not complete the handshake within {WAIT} s")

    def stop(self):
        """Closes the connection with a WebSocket close frame and waits for the server to close it.

        signalrcore's own `stop()` closes the socket under its blocked receive thread and then joins that
        thread, which only wakes up when the server next sends something (its keep-alive Ping, 15 s later).
        """
        transport = self.connection.transport
        socket_client = getattr(transport, "_client", None)
        if socket_client is not None and self.opened.is_set() and not self.closed.is_set():
            try:
                socket_client.send(struct.pack(">H", 1000), opcode=0x8)
            except OSError:
                pass
            if not self.closed.wait(WAIT):
                self.unrouted_errors.append(f"the server did not close the connection within {WAIT} s of a close frame")
        if socket_client is not None and not self.closed.is_set():
            try:
                socket_client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self.connection.stop()
            if socket_client is not None:
                socket_client.sock.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

    def _register(self, what, invocation_id=None):
        invocation_id = invocation_id or str(uuid.uuid4())
        pending = Pending(f"{self.label}: {what}")
        self.pending[invocation_id] = pending
        return invocation_id, pending

    def invoke(self, method, arguments):
        invocation_id, pending = self._register(f"{method}{arguments!r}")

        def on_completion(message):
            self.pending.pop(invocation_id, None)
            pending.complete(result=message.result)

        self.connection.send(method, arguments, on_invocation=on_completion, invocation_id=invocation_id)
        return pending.wait()

    def stream(self, method, arguments):
        """Runs a server-to-client stream to its end and returns its items."""
        with self.dispatch_lock:
            handler = self.connection.stream(method, arguments)
            invocation_id, pending = self._register(f"stream {method}{arguments!r}", handler.invocation_id)

            def on_complete(_message):
                self.pending.pop(invocation_id, None)
                pending.complete(result=pending.items)

            def on_error(message):
                self.pending.pop(invocation_id, None)
                pending.complete(error=repr(message))

            handler.subscribe({"next": pending.items.append, "complete": on_complete, "error": on_error})
        return pending.wait()

    def client_stream(self, method, items):
        """Invokes `method` with one client-to-server stream of `items` and returns its result."""
        stream_id = str(uuid.uuid4())
        invocation_id, pending = self._register(f"client stream {method}")

        def on_completion(message):
            self.pending.pop(invocation_id, None)
            pending.complete(result=message.result)

        invocation = InvocationMessage(invocation_id, method, [])
        invocation.stream_ids = [stream_id]
        self.connection.stream_handlers[invocation_id].append(InvocationHandler(invocation_id, on_completion))
        transport = self.connection.transport
        transport.send(invocation)
        for item in items:
            transport.send(StreamItemMessage(stream_id, item))
        if self.protocol_name == "messagepack":
            transport.send(MessagePackStreamCompletion(stream_id))
        else:
            transport.send(CompletionClientStreamMessage(stream_id))
        return pending.wait()

    def subject_stream(self, method, items):
        """Sends a client-to-server stream with signalrcore's public `Subject` (no result comes back)."""
        subject = Subject()
        self.connection.send(method, subject)
        for item in items:
            subject.next(item)
        subject.complete()

    def wait_for_call(self, target, count=1):
        """Waits until client method `target` was called `count` times; returns the argument lists."""
        deadline = time.monotonic() + WAIT
        with self.received_changed:
            while len(self.received[target]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioError(
                        f"{self.label}: client method {target!r} called {len(self.received[target])} time(s) "
                        f"within {WAIT} s, expected {count}"
                    )
                self.received_changed.wait(left)
            return list(self.received[target])

    def calls(self, target):
        with self.received_changed:
            return list(self.received[target])


def expect_equal(actual, expected, what):
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


# --- scenarios -------------------------------------------------------------------------------------------------


def scenario_echo(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    expect_equal(client.invoke("Echo", ["hello from python"]), "hello from python", "Echo")
    expect_equal(client.invoke("Echo", ["ünïcødé ✓"]), "ünïcødé ✓", "Echo (non-ASCII)")
    connection_id = client.invoke("GetCallerConnectionId", [])
    check(isinstance(connection_id, str) and connection_id, f"GetCallerConnectionId gave {connection_id!r}")


def scenario_stream(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    expect_equal(client.stream("Stream", []), ["a", "b", "c"], "Stream items")
    expect_equal(client.stream("EmptyStream", []), [], "EmptyStream items")


def scenario_stream_error(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    try:
        items = client.stream("StreamThrowException", ["stream boom"])
    except HubInvocationError as error:
        expected = (
            "An unexpected error occurred invoking 'StreamThrowException' on the server. "
            "InvalidOperationException: stream boom"
        )
        expect_equal(str(error), expected, "StreamThrowException error")
        return
    raise ScenarioError(f"StreamThrowException completed without an error, with items {items!r}")


def scenario_client_stream(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    expect_equal(client.client_stream("StreamingConcat", ["a", "b", "c", "dé"]), "abcdé", "StreamingConcat")
    expect_equal(client.client_stream("StreamingConcat", []), "", "StreamingConcat of an empty stream")
    if protocol == "json":
        # signalrcore's own Subject: fire and forget (see the module doc); the connection must stay usable.
        client.subject_stream("StreamingConcat", ["x", "y"])
        expect_equal(client.invoke("Echo", ["still here"]), "still here", "Echo after a Subject stream")


def scenario_server_calls_client(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub", listen=["Message"])
    expect_equal(client.invoke("InvokeWithString", ["message from the server"]), None, "InvokeWithString result")
    calls = client.wait_for_call("Message")
    expect_equal(calls, [["message from the server"]], "Message calls")


def scenario_error(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    try:
        result = client.invoke("ThrowException", ["boom from python"])
    except HubInvocationError as error:
        expect_equal(str(error), THROW_PREFIX + "boom from python", "ThrowException error")
    else:
        raise ScenarioError(f"ThrowException completed without an error, with {result!r}")
    # An error result leaves the connection usable.
    expect_equal(client.invoke("Echo", ["after the error"]), "after the error", "Echo after an error")


def scenario_unknown_method(base_url, protocol, clients):
    client = clients.open(base_url, "/testhub", protocol, "testhub")
    try:
        result = client.invoke("NoSuchMethod", [])
    except HubInvocationError as error:
        # What ASP.NET Core sends with detailed errors on (the test hub's setting).
        expected = "Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist."
        expect_equal(str(error), expected, "unknown method error")
    else:
        raise ScenarioError(f"NoSuchMethod completed without an error, with {result!r}")


def scenario_demo_groups(base_url, protocol, clients):
    group = f"py-{protocol}-{uuid.uuid4().hex[:8]}"
    first = clients.open(base_url, "/hub", protocol, "demo 1", listen=["msg"])
    second = clients.open(base_url, "/hub", protocol, "demo 2", listen=["msg"])
    outsider = clients.open(base_url, "/hub", protocol, "demo outsider", listen=["msg"])
    first.invoke("JoinGroup", [group])
    second.invoke("JoinGroup", [group])
    expect_equal(first.invoke("GroupCount", [group]), 2, "GroupCount")
    payload = {"text": "to the group", "n": 7, "list": [1, 2, 3]}
    first.invoke("SendToGroup", [group, payload])
    expect_equal(first.wait_for_call("msg"), [[payload]], "msg calls on the sender")
    expect_equal(second.wait_for_call("msg"), [[payload]], "msg calls on the other member")
    time.sleep(QUIET)
    expect_equal(outsider.calls("msg"), [], "msg calls on a connection outside the group")
    # Leaving the group stops the messages.
    second.invoke("LeaveGroup", [group])
    first.invoke("SendToGroup", [group, "second"])
    expect_equal(first.wait_for_call("msg", 2)[1], ["second"], "second msg on the sender")
    time.sleep(QUIET)
    expect_equal(second.calls("msg"), [[payload]], "msg calls after LeaveGroup")
    # Count streams integers.
    expect_equal(first.stream("Count", [5]), [1, 2, 3, 4, 5], "Count items")


SCENARIOS = [
    ("invoke Echo", scenario_echo),
    ("stream Stream", scenario_stream),
    ("stream error", scenario_stream_error),
    ("client stream StreamingConcat", scenario_client_stream),
    ("InvokeWithString calls Message", scenario_server_calls_client),
    ("ThrowException error", scenario_error),
    ("unknown method error", scenario_unknown_method),
    ("demo hub groups", scenario_demo_groups),
]


class Connections:
    """Opens connections for one scenario and closes them all afterwards."""

    def __init__(self):
        self.clients = []

    def open(self, base_url, path, protocol, label, listen=()):
        client = Client(base_url, path, protocol, f"{protocol} {label}")
        for target in listen:
            client.listen(target)
        self.clients.append(client)
        client.start()
        return client

    def unrouted_errors(self):
        return [f"{client.label}: {error}" for client in self.clients for error in client.unrouted_errors]

    def close(self):
        for client in self.clients:
            client.stop()


def run(base_url, protocols):
    passed, failed = 0, []
    for protocol in protocols:
        for name, scenario in SCENARIOS:
            label = f"{protocol}: {name}"
            clients = Connections()
            started = time.monotonic()
            try:
                scenario(base_url, protocol, clients)
                unrouted = clients.unrouted_errors()
                check(not unrouted, f"errors reported by signalrcore: {unrouted}")
            except Exception as error:  # noqa: BLE001 - every failure is reported
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
                if not isinstance(error, (ScenarioError, HubInvocationError)):
                    detail = traceback.format_exc().strip()
                failed.append(f"{label}: {detail}")
                print(f"FAIL {label} ({time.monotonic() - started:.2f} s)\n     {detail}", flush=True)
            else:
                passed += 1
                print(f"ok   {label} ({time.monotonic() - started:.2f} s)", flush=True)
            finally:
                clients.close()
    return passed, failed


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    base_url = argv[1]
    protocols = argv[2:] or list(PROTOCOLS)
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown:
        print(f"unknown protocol(s) {unknown}; known: {list(PROTOCOLS)}", file=sys.stderr)
        return 2
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    # signalrcore logs through the "SignalRCoreClient" logger; warnings and errors show what went wrong.
    logging.basicConfig(level=logging.WARNING, format="signalrcore %(levelname)s: %(message)s")

    print(f"signalrcore client tests against {base_url}: {', '.join(protocols)}", flush=True)
    passed, failed = run(base_url, protocols)
    print(f"{passed} passed, {len(failed)} failed", flush=True)
    if failed:
        print("failures:\n  " + "\n  ".join(failed), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
