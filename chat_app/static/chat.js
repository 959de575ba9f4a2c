// The chat page: one room at a time over SioClient (sio.js). Every piece of text that came
// from a user or the server is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 4000;

  const state = {
    name: "",
    room: "",
    socket: null,
    joined: false,
    cursor: null, // {seq, epoch} of the last message this page has: sent as since/epoch on reconnect
    members: [],
    presenceSeen: false, // the server sends `presence` events: no need to poll the members
    pollTimer: null,
    byId: new Map(), // message id -> <li>
  };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(kind, text) {
    $("status").dataset.state = kind;
    $("status").textContent = text;
  }

  function notice(text, kind = "warning") {
    const n = $("notice");
    n.hidden = !text;
    n.textContent = text || "";
    n.dataset.kind = kind;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function scrollDown() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  // -- members ----------------------------------------------------------------------

  function renderMembers() {
    const list = $("member-list");
    list.replaceChildren();
    const sorted = [...state.members].sort((a, b) => a.localeCompare(b));
    for (const user of sorted) {
      const item = el("li", user === state.name ? "me" : "", user);
      list.append(item);
    }
    $("member-count").textContent = String(state.members.length);
  }

  function setMembers(members) {
    state.members = [...members];
    renderMembers();
  }

  async function refreshMembers() {
    if (!state.joined) return;
    try {
      const response = await fetch(`/api/rooms/${encodeURIComponent(state.room)}`, { cache: "no-store" });
      if (response.ok) {
        const info = await response.json();
        if (info.room === state.room) setMembers(info.members);
      }
    } catch (err) {
      // offline: the next poll or the next join ack brings the list
    }
  }

  // presence: join/leave adjust the list, sync replaces it. members_count says how many the
  // server counts, so an event about ourselves that the join ack already counted is not
  // applied twice; when the counts still disagree the list is read again.
  function onPresence(event) {
    if (!event || event.room !== state.room || !state.joined) return;
    state.presenceSeen = true;
    stopPolling();
    if (Array.isArray(event.members)) {
      setMembers(event.members);
      return;
    }
    const count = Number(event.members_count);
    if (event.action === "join" && !(state.members.length >= count)) {
      state.members.push(event.user);
    } else if (event.action === "leave" && !(state.members.length <= count)) {
      const at = state.members.indexOf(event.user);
      if (at >= 0) state.members.splice(at, 1);
    }
    renderMembers();
    if (Number.isFinite(count) && state.members.length !== count) refreshMembers();
  }

  function startPolling() {
    stopPolling();
    if (!state.presenceSeen) state.pollTimer = setInterval(refreshMembers, POLL_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  // -- messages ---------------------------------------------------------------------

  function advance(seq, epoch) {
    if (!state.cursor || state.cursor.epoch !== epoch) {
      state.cursor = { seq, epoch };
    } else if (seq > state.cursor.seq) {
      state.cursor.seq = seq;
    }
  }

  function messageItem(sender, text, mine) {
    const item = el("li", mine ? "msg mine" : "msg");
    const meta = el("div", "meta");
    meta.append(el("span", "sender", sender), el("time", "time"), el("span", "state"));
    item.append(meta, el("p", "text", text));
    return item;
  }

  function fill(item, envelope, itemState) {
    item.dataset.id = envelope.id;
    item.dataset.seq = String(envelope.seq);
    item.dataset.epoch = envelope.epoch;
    item.dataset.state = itemState;
    const time = item.querySelector("time");
    time.textContent = clock(envelope.timestamp);
    time.dateTime = new Date(envelope.timestamp).toISOString();
    item.querySelector(".state").textContent = itemState === "sent" ? "✓ sent" : "";
    state.byId.set(envelope.id, item);
  }

  function showEnvelope(envelope) {
    if (envelope.room !== state.room) return;
    advance(envelope.seq, envelope.epoch);
    if (state.byId.has(envelope.id)) return; // already shown (history overlap, own send)
    const item = messageItem(envelope.sender, envelope.message, envelope.sender === state.name);
    fill(item, envelope, "received");
    $("messages").append(item);
    scrollDown();
  }

  // A confirmed send goes where the server put it: right after the last message of the same
  // epoch with a lower seq (others' messages may have arrived while it was pending).
  function placeBySeq(item) {
    const seq = Number(item.dataset.seq);
    let after = null;
    for (const other of $("messages").children) {
      if (other !== item && other.dataset.epoch === item.dataset.epoch && Number(other.dataset.seq) < seq) {
        after = other;
      }
    }
    if (after && after.nextElementSibling !== item) after.after(item);
  }

  function separator(text) {
    $("messages").append(el("li", "msg separator", text));
  }

  function send(text) {
    const item = messageItem(state.name, text, true);
    $("messages").append(item);
    scrollDown();
    // One idempotency key per message: a retry of a send whose answer was lost is stored once.
    const key = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    deliver(item, text, key);
  }

  async function deliver(item, text, key) {
    item.dataset.state = "pending";
    item.querySelector(".state").textContent = "sending…";
    const retry = item.querySelector("button.retry");
    if (retry) retry.remove();
    const ack = await state.socket.call("send_message", { room: state.room, message: text, key });
    if (!ack || !ack.ok) {
      item.dataset.state = "failed";
      item.querySelector(".state").textContent = `not sent: ${(ack && ack.error && ack.error.message) || "no answer"}`;
      const again = el("button", "retry", "Retry");
      again.type = "button";
      again.addEventListener("click", () => deliver(item, text, key));
      item.querySelector(".meta").append(again);
      return;
    }
    const shown = state.byId.get(ack.id);
    if (shown && shown !== item) {
      item.remove(); // the broadcast came before the ack: keep that one, mark it confirmed
      shown.dataset.state = "sent";
      shown.querySelector(".state").textContent = "✓ sent";
    } else {
      fill(item, { ...ack, room: state.room }, "sent");
      placeBySeq(item);
    }
    advance(ack.seq, ack.epoch);
  }

  // -- joining and reconnecting --------------------------------------------------------

  async function join() {
    const recovering = state.cursor !== null;
    const payload = recovering
      ? { room: state.room, since: state.cursor.seq, epoch: state.cursor.epoch }
      : { room: state.room };
    const ack = await state.socket.call("join_room", payload);
    if (!ack || !ack.ok) {
      const message = (ack && ack.error && ack.error.message) || "no answer";
      if (!state.joined) {
        leave();
        $("join-error").hidden = false;
        $("join-error").textContent = `Could not join: ${message}`;
      } else {
        notice(`Could not rejoin the room: ${message}`);
      }
      return;
    }
    state.joined = true;
    setMembers(ack.members);
    if (recovering && ack.recovered === false) {
      separator("messages may be missing here");
      notice("Reconnected, but the messages sent while you were away could not be recovered.");
      state.cursor = null;
      const fresh = await state.socket.call("join_room", { room: state.room });
      if (fresh && fresh.ok) fresh.history.forEach(showEnvelope);
    } else {
      ack.history.forEach(showEnvelope);
      if (recovering) {
        const n = ack.history.length;
        notice(`Reconnected: ${n} missed message${n === 1 ? "" : "s"} recovered.`, "info");
      }
    }
    advance(ack.seq, ack.epoch);
    startPolling();
  }

  function connect() {
    const socket = new SioClient(SioClient.urlFor(window.location), { auth: { username: state.name } });
    state.socket = socket;
    socket.on("connect", () => {
      setStatus("connected", "connected");
      join();
    });
    socket.on("disconnect", () => {
      setStatus("reconnecting", "reconnecting…");
      notice("Connection lost. Reconnecting…");
      stopPolling();
    });
    socket.on("reconnecting", ({ attempt }) => setStatus("reconnecting", `reconnecting (try ${attempt})…`));
    socket.on("connect_error", (error) => {
      // The server refused the connection itself (e.g. it requires a token): retrying won't help.
      leave();
      $("join-error").hidden = false;
      $("join-error").textContent = `The server refused the connection: ${(error && error.message) || "no reason given"}`;
    });
    socket.on("broadcast_message", showEnvelope);
    socket.on("presence", onPresence);
    socket.on("error", (error) => notice(`${error.event || "server"}: ${error.message}`));
    socket.open();
  }

  function enter(name, room) {
    state.name = name;
    state.room = room;
    state.cursor = null;
    state.joined = false;
    state.byId.clear();
    $("messages").replaceChildren();
    setMembers([]);
    notice("");
    $("join-error").hidden = true;
    $("room-title").textContent = room;
    $("join-form").hidden = true;
    $("chat").hidden = false;
    localStorage.setItem("chat.name", name);
    window.location.hash = encodeURIComponent(room);
    document.title = `${room} · chat_app`;
    setStatus("connecting", "connecting…");
    connect();
    $("message").focus();
  }

  function leave() {
    stopPolling();
    if (state.socket) {
      if (state.joined) state.socket.emit("leave_room", { room: state.room });
      state.socket.close();
      state.socket = null;
    }
    state.joined = false;
    $("chat").hidden = true;
    $("join-form").hidden = false;
    setStatus("idle", "not connected");
    history.replaceState(null, "", window.location.pathname);
    document.title = "chat_app";
  }

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    const room = $("room").value.trim();
    if (name && room) enter(name, room);
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message").value;
    if (!text.trim() || !state.joined) return;
    $("message").value = "";
    send(text);
  });

  $("leave").addEventListener("click", leave);

  // A reload (or a shared link with #room) comes straight back into the room.
  const savedName = localStorage.getItem("chat.name") || "";
  let linkedRoom = "";
  try {
    linkedRoom = decodeURIComponent(window.location.hash.slice(1));
  } catch (err) {
    // a hand-typed hash that is not valid percent-encoding: ignore it
  }
  $("name").value = savedName;
  if (linkedRoom) $("room").value = linkedRoom;
  if (savedName && linkedRoom) enter(savedName, linkedRoom);
})();
