// One Socket.IO 4.8 server of the comparison (benches/compare.sh): the same contract as hubmesh's demo hub,
// clustered with @socket.io/redis-adapter over a local Redis. Loopback only.
//   node server.js PORT REDIS_PORT
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const port = Number(process.argv[2]);
  const redisPort = Number(process.argv[3]);
  const pub = createClient({ url: `redis://127.0.0.1:${redisPort}` });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis:", e.message));
  sub.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack();
    });
    // SendToGroup: every member of the room, on every server.
    socket.on("send", (room, payload) => io.to(room).emit("msg", payload));
    // Broadcast.
    socket.on("broadcast", (payload) => io.emit("msg", payload));
    // Echo: the payload back as the acknowledgement.
    socket.on("echo", (payload, ack) => {
      if (typeof ack === "function") ack(payload);
    });
  });
  httpServer.listen(port, "127.0.0.1", () => console.log(`ready ${port}`));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
