// The Web Worker scenario ("can use SignalR client" in upstream's WebWorkerTests.ts): the web-worker build of the
// official client, loaded with importScripts from the test hub's server (which serves it where upstream's app does,
// /lib/signalr-webworker/signalr.js), connects to the hub (on another origin), invokes Echo, and has the hub call
// it back with InvokeWithString. The page posts { libUrl, hubUrl, transport, message }; the worker answers
// { ok, result?, pushed?, transport?, error? }.

self.onmessage = async (event) => {
    const { libUrl, hubUrl, transport, message } = event.data;
    let connection;
    try {
        importScripts(libUrl);
        connection = new signalR.HubConnectionBuilder()
            .withUrl(hubUrl, { transport: signalR.HttpTransportType[transport] })
            .configureLogging(signalR.LogLevel.Warning)
            .build();
        const pushed = new Promise((resolve) => connection.on("message", resolve));
        await connection.start();
        const result = await connection.invoke("Echo", message);
        await connection.invoke("invokeWithString", message);
        const active = await connection.invoke("GetActiveTransportName");
        const pushedMessage = await pushed;
        await connection.stop();
        self.postMessage({ ok: true, result, pushed: pushedMessage, transport: active });
    } catch (error) {
        try {
            await connection?.stop();
        } catch {
            // already failing
        }
        self.postMessage({ ok: false, error: String(error && error.stack ? error.stack : error) });
    }
};
