// A small Socket.IO v5 client over Engine.IO v4, websocket transport only (no polling).
// Written for this app so the page needs no CDN and the repo holds no third-party code.
// Wire: server "0{open}" -> client "40{auth}" -> server "40{sid}"; ping "2" -> pong "3";
// events 42["name",data]; with ack 42<id>["name",data] answered by 43<id>[data].
// It reconnects by itself with capped exponential backoff and jitter.
"use strict";

class SioClient {
  constructor(url, { auth = null, reconnectBase = 500, reconnectCap = 5000, ackTimeout = 10000 } = {}) {
    this.url = url; // ws(s)://host/socket.io/?EIO=4&transport=websocket
    this.auth = auth;
    this.reconnectBase = reconnectBase;
    this.reconnectCap = reconnectCap;
    this.ackTimeout = ackTimeout;
    this.handlers = new Map(); // event name -> [fn]
    this.acks = new Map(); // ack id -> {resolve, timer}
    this.nextAck = 0;
    this.connected = false;
    this.closedByUser = false;
    this.attempts = 0;
    this.ws = null;
    this.pingTimer = null;
    this.reconnectTimer = null;
  }

  static urlFor(location) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/socket.io/?EIO=4&transport=websocket`;
  }

  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, []);
    this.handlers.get(event).push(fn);
    return this;
  }

  fire(event, ...args) {
    for (const fn of this.handlers.get(event) || []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`handler for ${event} failed`, err);
      }
    }
  }

  open() {
    this.closedByUser = false;
    clearTimeout(this.reconnectTimer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (e) => this.onPacket(String(e.data));
    ws.onclose = () => this.onClose(ws, "transport close");
    ws.onerror = () => {}; // onclose follows and does the work
  }

  close() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws) {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send("41");
      this.ws.close();
    }
  }

  // Drop the transport as a network failure would (the page's "reconnect" path).
  drop() {
    if (this.ws) this.ws.close();
  }

  armPing(timeout) {
    clearTimeout(this.pingTimer);
    // No ping within interval + timeout: the connection is dead even if TCP has not said so.
    this.pingTimer = setTimeout(() => this.ws && this.ws.close(), timeout);
  }

  onPacket(data) {
    const type = data[0];
    if (type === "0") {
      const open = JSON.parse(data.slice(1));
      this.pingWindow = open.pingInterval + open.pingTimeout;
      this.armPing(this.pingWindow);
      this.ws.send("40" + (this.auth ? JSON.stringify(this.auth) : ""));
    } else if (type === "2") {
      this.armPing(this.pingWindow);
      this.ws.send("3");
    } else if (type === "1") {
      this.ws.close();
    } else if (type === "4") {
      this.onSocketPacket(data.slice(1));
    }
  }

  onSocketPacket(data) {
    const type = data[0];
    const rest = data.slice(1);
    if (type === "0") {
      this.connected = true;
      this.attempts = 0;
      this.fire("connect", JSON.parse(rest || "{}"));
    } else if (type === "1") {
      this.ws.close(); // the server ended our session
    } else if (type === "2" || type === "3") {
      const m = /^(\d*)([\s\S]*)$/.exec(rest);
      const id = m[1] === "" ? null : Number(m[1]);
      const args = JSON.parse(m[2]);
      if (type === "3") {
        const pending = this.acks.get(id);
        if (pending) {
          this.acks.delete(id);
          clearTimeout(pending.timer);
          pending.resolve(args[0]);
        }
      } else {
        this.fire(args[0], ...args.slice(1));
      }
    } else if (type === "4") {
      this.fire("connect_error", JSON.parse(rest || "{}"));
      this.ws.close();
    }
  }

  onClose(ws, reason) {
    if (ws !== this.ws) return;
    clearTimeout(this.pingTimer);
    const was = this.connected;
    this.connected = false;
    for (const [, pending] of this.acks) {
      clearTimeout(pending.timer);
      pending.resolve({ ok: false, error: { code: "disconnected", message: "connection lost before the answer" } });
    }
    this.acks.clear();
    if (was) this.fire("disconnect", reason);
    if (this.closedByUser) return;
    const delay = Math.min(this.reconnectCap, this.reconnectBase * 2 ** this.attempts) * (0.5 + Math.random() / 2);
    this.attempts += 1;
    this.fire("reconnecting", { attempt: this.attempts, delay });
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  emit(event, data) {
    if (!this.connected) return false;
    this.ws.send("42" + JSON.stringify([event, data]));
    return true;
  }

  // Emit with an ack callback; resolves with the server's answer, or an error object when
  // not connected, when the connection drops first, or after ackTimeout.
  call(event, data) {
    return new Promise((resolve) => {
      if (!this.connected) {
        resolve({ ok: false, error: { code: "disconnected", message: "not connected" } });
        return;
      }
      const id = this.nextAck++;
      const timer = setTimeout(() => {
        this.acks.delete(id);
        resolve({ ok: false, error: { code: "timeout", message: "no answer from the server" } });
      }, this.ackTimeout);
      this.acks.set(id, { resolve, timer });
      this.ws.send("42" + id + JSON.stringify([event, data]));
    });
  }
}

window.SioClient = SioClient;
