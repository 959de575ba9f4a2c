"use strict";
// The peer: what people who can choose their stack run instead of chat_app. socket.io 4.8 with
// @socket.io/redis-adapter on node-redis (separate pub and sub clients), the same events and
// acks as chat_app and the baseline, no sequencing, history or presence. One process per node,
// started by the bench with PORT, REDIS_URL and INSTANCE_ID, like a chat_app node.
const http = require("node:http");
const { randomBytes } = require("node:crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT);
const INSTANCE_ID = process.env.INSTANCE_ID || "peer";
const stats = { received: 0 }; // messages this node's adapter took from Redis (routing evidence)

function reply(res, body) {
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on("error", (err) => console.error(`event=redis_error error=${err}`));
  await Promise.all([pub.connect(), sub.connect()]);
  const web = http.createServer((req, res) => {
    if (req.url === "/healthz") reply(res, { status: "ok", instance_id: INSTANCE_ID });
    else if (req.url === "/stats") reply(res, stats);
    else res.writeHead(404).end();
  });
  const io = new Server(web, { adapter: createAdapter(pub, sub) });
  const adapter = io.of("/").adapter;
  const onmessage = adapter.onmessage.bind(adapter);
  adapter.onmessage = (...args) => {
    stats.received += 1;
    return onmessage(...args);
  };
  io.on("connection", (socket) => {
    const sender = socket.handshake.auth?.username || "anonymous";
    socket.on("join_room", (payload, ack) => {
      const room = typeof payload === "string" ? payload : payload?.room;
      if (typeof ack !== "function") return;
      if (typeof room !== "string" || !room) {
        return ack({ ok: false, error: { code: "invalid_room", message: "room must be a string" } });
      }
      socket.join(room);
      ack({ ok: true, room, seq: 0, epoch: "", members: [], history: [] });
    });
    socket.on("send_message", (payload, ack) => {
      const { room, message } = payload ?? {};
      if (typeof room !== "string" || typeof message !== "string") {
        if (typeof ack === "function") {
          ack({ ok: false, error: { code: "invalid_payload", message: "room and message are required" } });
        }
        return;
      }
      const envelope = { id: randomBytes(16).toString("hex"), room, sender, message, timestamp: Date.now() };
      io.to(room).emit("broadcast_message", envelope);
      if (typeof ack === "function") ack({ ok: true, id: envelope.id, seq: 0, epoch: "", timestamp: envelope.timestamp });
    });
  });
  web.listen(PORT, "127.0.0.1", () => console.log(`event=listening port=${PORT} instance_id=${INSTANCE_ID}`));
  process.on("SIGTERM", () => {
    console.log(`event=stopping received=${stats.received}`);
    process.exit(0);
  });
}

main().catch((err) => {
  console.error(`event=start_failed error=${err}`);
  process.exit(1);
});
