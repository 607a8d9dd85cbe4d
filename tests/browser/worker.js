// The Web Worker scenario ("can use SignalR client" in upstream's WebWorkerTests.ts): the web-worker build of the
// official client, loaded with importScripts, connects to the hub (on another origin) and invokes Echo.
// The page posts { libUrl, hubUrl, transport, message }; the worker answers { ok, result?, transport?, error? }.

self.onmessage = async (event) => {
    const { libUrl, hubUrl, transport, message } = event.data;
    let connection;
    try {
        importScripts(libUrl);
        connection = new signalR.HubConnectionBuilder()
            .withUrl(hubUrl, { transport: signalR.HttpTransportType[transport] })
            .configureLogging(signalR.LogLevel.Warning)
            .build();
        await connection.start();
        const result = await connection.invoke("Echo", message);
        const active = await connection.invoke("GetActiveTransportName");
        await connection.stop();
        self.postMessage({ ok: true, result, transport: active });
    } catch (error) {
        try {
            await connection?.stop();
        } catch {
            // already failing
        }
        self.postMessage({ ok: false, error: String(error && error.stack ? error.stack : error) });
    }
};
