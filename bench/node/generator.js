"use strict";
// The bench's second load generator, on the official socket.io-client (websocket transport
// only, one process). It holds no workload of its own: bench/official.py sends it a job, and
// it measures what bench/workloads.py's FanOut measures, the same way, and hands the raw
// bookkeeping back so that Python computes every figure with the same code for both generators.
//
// Protocol, one JSON object per line. stdin: the job first, then {"cmd": "go", ...} (fanout
// jobs) and {"cmd": "close"}. stdout: {"event": "ready", ...} once every client is connected
// and joined, {"event": "result", ...} after the sends and the drain, {"event": "error", ...}
// on failure. stdin closing ends the process: the bench has gone.
const readline = require("node:readline");
const { performance } = require("node:perf_hooks");
const { io } = require("socket.io-client");

const now = () => performance.now() / 1000; // seconds, as Python's perf_counter
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const MEASURE = 1;
const REMOTE = 2;
const SENDER = 4;

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

const inbox = [];
let waiting = null;
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const message = JSON.parse(line);
  if (waiting) {
    const resolve = waiting;
    waiting = null;
    resolve(message);
  } else inbox.push(message);
});
lines.on("close", () => process.exit(0));
const command = () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => (waiting = r)));

function connect(port, username, onEvent, timeoutS) {
  const socket = io(`http://127.0.0.1:${port}`, {
    transports: ["websocket"],
    auth: { username },
    forceNew: true, // else every socket to one node shares one connection
    reconnection: false,
    timeout: timeoutS * 1000,
  });
  if (onEvent) socket.on("broadcast_message", onEvent);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`connect ${username} to ${port}: ${err.message}`));
    });
  });
}

async function join(socket, room) {
  const ack = await socket.timeout(30000).emitWithAck("join_room", { room });
  if (!ack || !ack.ok) throw new Error(`join ${room} failed: ${JSON.stringify(ack)}`);
}

/** `fn(item, i)` over items, `limit` at a time; the seconds each took, in order. */
async function pool(items, limit, fn) {
  const times = new Array(items.length).fill(0);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      const t = now();
      await fn(items[i], i);
      times[i] = now() - t;
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return times;
}

const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString("base64");

class FanOut {
  constructor(rooms, capacity) {
    Object.assign(this, { rooms, capacity, delivered: 0, duplicates: 0, lastDelivery: 0, maxLag: 0 });
    Object.assign(this, { sent: 0, ackedOk: 0, refused: 0, errors: {}, timeline: [] });
    this.latencies = [];
    this.ackLatencies = [];
    this.remoteLatencies = [];
    this.acks = new Uint8Array(rooms * capacity); // 1 ok, 2 refused
    this.counts = new Uint8Array(rooms * capacity);
  }

  receiver(flags) {
    const seen = new Uint8Array(this.capacity);
    return (data) => {
      const at = now();
      const [room, n, sentAt] = data.message.split("|", 3).map(Number);
      if (seen[n]) {
        this.duplicates += 1;
        return;
      }
      seen[n] = 1;
      this.counts[room * this.capacity + n] += 1;
      this.delivered += 1;
      this.lastDelivery = at;
      if (flags & MEASURE) {
        this.latencies.push(at - sentAt);
        if (flags & REMOTE) this.remoteLatencies.push(at - sentAt);
      }
    };
  }

  onAck(room, n, sentAt, reply) {
    if (reply && typeof reply === "object" && reply.ok) {
      this.acks[room * this.capacity + n] = 1;
      this.ackedOk += 1;
      this.ackLatencies.push(now() - sentAt);
    } else {
      this.acks[room * this.capacity + n] = 2;
      const code = (reply && typeof reply === "object" && reply.error?.code) || JSON.stringify(reply) || "unknown";
      this.errors[code] = (this.errors[code] || 0) + 1;
      this.refused += 1;
    }
  }

  async run(senders, rate, duration, pad) {
    const total = Math.floor(rate * duration);
    const perRoom = new Array(this.rooms).fill(0);
    const t0 = now() + 0.02;
    let k = 0;
    while (k < total) {
      const due = Math.min(total, Math.floor((now() - t0) * rate) + 1);
      while (k < due) {
        const room = k % this.rooms;
        const n = perRoom[room]++;
        const at = now();
        this.maxLag = Math.max(this.maxLag, at - (t0 + k / rate));
        const payload = { room: `room${room}`, message: `${room}|${n}|${at.toFixed(6)}|${pad}` };
        senders[room].emit("send_message", payload, (reply) => this.onAck(room, n, at, reply));
        k += 1;
      }
      this.sent = k;
      await sleep(1);
    }
    return t0;
  }

  pending() {
    return this.sent - this.ackedOk - this.refused;
  }

  expected(members) {
    let total = 0;
    for (let i = 0; i < this.acks.length; i++) if (this.acks[i] === 1) total += members[Math.floor(i / this.capacity)];
    return total;
  }

  lost(members) {
    let missing = 0;
    for (let i = 0; i < this.acks.length; i++) {
      if (this.acks[i] === 1) missing += members[Math.floor(i / this.capacity)] - this.counts[i];
    }
    return missing;
  }

  async drain(members, quiet, cap) {
    const start = now();
    let lastMove = start;
    let seen = "";
    while (now() - start < cap) {
      // The count alone is not enough: a server may deliver sends it answered as refused.
      const done = this.pending() === 0 && this.delivered >= this.expected(members) && this.lost(members) === 0;
      if (done) return true;
      const state = `${this.delivered}/${this.sent - this.pending()}`;
      if (state !== seen) [seen, lastMove] = [state, now()];
      else if (now() - lastMove > quiet) return true;
      await sleep(50);
    }
    return false;
  }
}

async function fanout(job) {
  const f = new FanOut(job.rooms, job.capacity);
  const members = new Array(job.rooms).fill(0);
  const sockets = new Array(job.members.length);
  const senders = new Array(job.rooms);
  await pool(job.members, job.concurrency, async ([port, user, room, flags], i) => {
    members[room] += 1;
    sockets[i] = await connect(port, user, f.receiver(flags), job.connect_timeout);
    if (flags & SENDER) senders[room] = sockets[i];
  });
  await pool(job.members, job.concurrency, ([, , room], i) => join(sockets[i], `room${room}`));
  emit({ event: "ready" });
  const go = await command();
  const sampleStart = now();
  const sampler = setInterval(() => {
    const t = Math.round((now() - sampleStart) * 10) / 10;
    f.timeline.push([t, f.delivered, f.ackedOk, f.refused]);
  }, 1000);
  const t0 = await f.run(senders, go.rate, go.duration, job.pad);
  const settled = await f.drain(members, go.quiet, go.cap);
  clearInterval(sampler);
  emit({
    event: "result",
    settled,
    sent: f.sent,
    acked_ok: f.ackedOk,
    errors: f.errors,
    duplicates: f.duplicates,
    delivered: f.delivered,
    last_delivery: f.lastDelivery ? f.lastDelivery - t0 : 0,
    max_lag: f.maxLag,
    timeline: f.timeline,
    members,
    acks: b64(f.acks),
    counts: b64(f.counts),
    latencies: b64(Float64Array.from(f.latencies)),
    ack_latencies: b64(Float64Array.from(f.ackLatencies)),
    remote_latencies: b64(Float64Array.from(f.remoteLatencies)),
  });
  return sockets;
}

async function idle(job) {
  const sockets = new Array(job.members.length);
  const t = now();
  const connectTimes = await pool(job.members, job.concurrency, async ([port, user], i) => {
    sockets[i] = await connect(port, user, null, job.connect_timeout);
  });
  // The bench reads the nodes' CPU between the two phases, then says go.
  emit({ event: "connected", connect_s: now() - t });
  const go = await command();
  if (go.cmd !== "join") throw new Error(`expected join, got ${JSON.stringify(go)}`);
  const joinTimes = await pool(job.members, job.concurrency, ([, , room], i) => join(sockets[i], `room${room}`));
  emit({ event: "ready", total_s: now() - t, connect_times: connectTimes, join_times: joinTimes });
  return sockets;
}

async function main() {
  const job = await command();
  const sockets = await (job.kind === "idle" ? idle(job) : fanout(job));
  const close = await command();
  if (close.cmd !== "close") throw new Error(`expected close, got ${JSON.stringify(close)}`);
  for (const socket of sockets) socket?.close();
  emit({ event: "closed" });
  setTimeout(() => process.exit(0), 200);
}

main().catch((err) => {
  emit({ event: "error", message: String(err?.stack || err) });
  process.exit(1);
});
