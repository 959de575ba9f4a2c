// The chat page over the official socket.io-client (static/vendor/socket.io-client/, `io`).
// A person picks a name and a room; the server may join them to more rooms (`room_joined`)
// or take them out of one (`room_left`). Direct conversations (open_direct, list_directs)
// are rooms too, listed apart under the other person's name. Every room keeps its own
// messages, cursor and members, and every joined room is rejoined with since/epoch after a
// reconnect. Every piece of text that came from a user or the server is set with
// textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 4000;
  const ACK_TIMEOUT_MS = 10000;
  // The client's own reconnection: websocket first; when a websocket cannot be opened at all
  // (a proxy that refuses the upgrade), the same attempt falls back to long-polling.
  const CLIENT_OPTIONS = {
    autoConnect: false,
    transports: ["websocket", "polling"],
    tryAllTransports: true,
    reconnection: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 5000,
    randomizationFactor: 0.5,
    timeout: 10000,
  };
  // After the server ended the session itself (a node shutting down) the client does not
  // reconnect on its own; the page does, after a growing pause: long enough for a stopping
  // node to have closed its listener (gunicorn's worker checks about once a second), and
  // growing so that a server that keeps closing sessions is not hammered.
  const SERVER_CLOSE_BASE_MS = 2000;
  const SERVER_CLOSE_CAP_MS = 10000;
  const STABLE_MS = 30000;
  // Typing: the server passes on at most one per connection per room every 2 s; the page
  // sends no more than that, and shows "<user> is typing" for a while after the last one.
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOWN_MS = 5000;
  const SEEN_KEPT = 200; // direct conversations whose last seen seq this browser remembers

  const state = {
    name: "",
    socket: null,
    rooms: new Map(), // room name -> Room, in the order they appear in the list
    current: null, // the Room on screen
    kicked: false, // disconnected_by_server: no reconnection until the person asks
    serverCloses: 0, // server-ended sessions in a row (the page's own backoff)
    serverCloseTimer: null,
    stableTimer: null,
    pollTimer: null,
    reconnected: false, // this connection follows a lost one: report what was recovered
    typingTimer: null,
  };

  // One room as this page knows it. `joined`: a member (or about to rejoin after a drop);
  // `left`: the server took us out (the room stays listed, read-only, until Leave).
  // `direct`: the other person's name in a direct conversation (entered with open_direct).
  function newRoom(name, direct = null) {
    const list = el("ol", "messages");
    list.setAttribute("aria-live", "polite");
    return {
      name,
      joined: false,
      everJoined: false,
      left: null,
      cursor: null, // {seq, epoch} of the last message this page has: sent as since/epoch on reconnect
      members: [],
      presenceSeen: false, // the server sends `presence` events for it: no need to poll the members
      unread: 0,
      byId: new Map(), // message id -> <li>
      list,
      direct,
      opening: false, // an open_direct is on its way
      activity: 0, // ms of its newest message: conversations are listed newest first
      typing: new Map(), // user -> until when (ms) "<user> is typing" is shown
      typedAt: 0, // when this page last told the room we are typing
    };
  }

  // The two names of a direct conversation's room, `@<a>+<b>` with %XX escapes (the server
  // derives it); null for any other room. Only used to name the other person.
  function directPeer(name) {
    if (!name.startsWith("@") || name.split("+").length !== 2) return null;
    try {
      const [a, b] = name.slice(1).split("+").map(decodeURIComponent);
      if (a === state.name) return b;
      if (b === state.name) return a;
    } catch (err) {
      // not percent-encoding: not a conversation's name
    }
    return null;
  }

  function directWith(peer) {
    for (const room of state.rooms.values()) if (room.direct === peer) return room;
    return null;
  }

  // The last seq seen of each conversation, per name, so unread counts survive a reload.
  function seenAll() {
    try {
      const saved = JSON.parse(localStorage.getItem(`chat.seen.${state.name}`) || "{}");
      return saved && typeof saved === "object" ? saved : {};
    } catch (err) {
      return {};
    }
  }

  function seenSeq(roomName, epoch) {
    const saved = seenAll()[roomName];
    return saved && saved.epoch === epoch && Number.isFinite(saved.seq) ? saved.seq : 0;
  }

  function markSeen(room) {
    if (!room.direct || !room.cursor) return;
    const all = seenAll();
    delete all[room.name]; // re-added last: the oldest go first when there are too many
    all[room.name] = { seq: room.cursor.seq, epoch: room.cursor.epoch };
    const names = Object.keys(all);
    for (const old of names.slice(0, Math.max(0, names.length - SEEN_KEPT))) delete all[old];
    try {
      localStorage.setItem(`chat.seen.${state.name}`, JSON.stringify(all));
    } catch (err) {
      // storage full or refused: unread counts start afresh after a reload
    }
  }

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
    if (!state.kicked) $("reconnect").hidden = true;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function isText(value) {
    return typeof value === "string" && value.length > 0;
  }

  function scrollDown(room) {
    room.list.scrollTop = room.list.scrollHeight;
  }

  // -- the rooms list -----------------------------------------------------------------

  function renderRooms() {
    const list = $("room-list");
    const directs = $("direct-list");
    list.replaceChildren();
    directs.replaceChildren();
    const rooms = [...state.rooms.values()];
    const conversations = rooms.filter((r) => r.direct).sort((x, y) => y.activity - x.activity);
    for (const room of [...rooms.filter((r) => !r.direct), ...conversations]) {
      const button = el("button", "room");
      button.type = "button";
      button.dataset.room = room.name;
      if (room.direct) button.dataset.with = room.direct;
      button.append(el("span", "name", room.direct || room.name));
      if (room.left) button.append(el("span", "tag", "left"));
      if (room.unread > 0) button.append(el("span", "unread", String(room.unread)));
      if (room === state.current) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => show(room));
      const item = el("li", room.left ? "left" : "");
      item.append(button);
      (room.direct ? directs : list).append(item);
    }
  }

  function show(room) {
    const previous = state.current;
    state.current = room;
    room.unread = 0;
    if (previous !== room) {
      const shown = $("messages");
      shown.removeAttribute("id");
      room.list.id = "messages";
      shown.replaceWith(room.list);
      scrollDown(room);
    }
    const title = room.direct ? `Conversation with ${room.direct}` : room.name;
    $("room-title").textContent = title;
    document.title = `${title} · chat_app`;
    // A reload comes back to the room in the link; conversations come back from list_directs.
    // This tab remembers the room it showed, so only a reload of it skips the Join click.
    if (!room.direct) {
      history.replaceState(null, "", `#${encodeURIComponent(room.name)}`);
      sessionStorage.setItem("chat.shown", room.name);
    }
    const open = !room.left;
    $("message").disabled = !open;
    $("send").disabled = !open;
    $("message").placeholder = !open
      ? "You are no longer in this room"
      : room.direct
        ? `Write to ${room.direct}`
        : "Write a message";
    markSeen(room);
    $("load-older").hidden = Boolean(room.allOlder);
    if (previous !== room) closeSearch();
    renderMembers();
    renderRooms();
    renderTyping();
    startPolling();
    // A conversation listed by list_directs is entered when it is first shown.
    if (room.direct && !room.joined && !room.left && !room.opening) openDirect(room.direct);
  }

  function forget(room) {
    state.rooms.delete(room.name);
    if (state.current === room) {
      const next = state.rooms.values().next().value;
      if (next) show(next);
      else state.current = null;
    }
    renderRooms();
  }

  // -- members ------------------------------------------------------------------------

  function renderMembers() {
    const room = state.current;
    const members = room && !room.left ? room.members : [];
    const list = $("member-list");
    list.replaceChildren();
    for (const user of [...members].sort((a, b) => a.localeCompare(b))) {
      list.append(el("li", user === state.name ? "me" : "", user));
    }
    // A big room's ack and events name only a page of its members, and say how many there are.
    const count = room && !room.left && Number.isFinite(room.count) ? Math.max(room.count, members.length) : members.length;
    if (count > members.length) list.append(el("li", "more", `and ${count - members.length} more`));
    $("member-count").textContent = String(count);
  }

  function setMembers(room, members, count) {
    room.members = Array.isArray(members) ? members.filter(isText) : [];
    room.count = Number.isFinite(count) ? count : null;
    if (room === state.current) renderMembers();
  }

  async function refreshMembers() {
    const room = state.current;
    if (!room || !room.joined) return;
    try {
      const url = `/api/rooms/${encodeURIComponent(room.name)}/members?limit=100`;
      const response = await fetch(url, { cache: "no-store" });
      if (response.ok) {
        const info = await response.json();
        if (info.room === room.name && room.joined) setMembers(room, info.members, Number(info.members_count));
      }
    } catch (err) {
      // offline: the next poll or the next join ack brings the list
    }
  }

  // presence: join/leave adjust the list, sync replaces it. members_count says how many the
  // server counts, so an event about ourselves that the join ack already counted is not
  // applied twice; when the counts still disagree the list is read again.
  function onPresence(event) {
    const room = event && state.rooms.get(event.room);
    if (!room || !room.joined) return;
    room.presenceSeen = true;
    if (room === state.current) stopPolling();
    const count = Number(event.members_count);
    if (Array.isArray(event.members)) {
      setMembers(room, event.members, count);
      return;
    }
    if (event.action === "count") {
      // a big room: its members are counted, not announced one by one
      setMembers(room, room.members, count);
      return;
    }
    if (event.action === "join" && !(room.members.length >= count)) {
      room.members.push(event.user);
    } else if (event.action === "leave" && !(room.members.length <= count)) {
      const at = room.members.indexOf(event.user);
      if (at >= 0) room.members.splice(at, 1);
    }
    setMembers(room, room.members, count);
    const paged = Number.isFinite(room.pageSize) && count > room.pageSize;
    if (room === state.current && Number.isFinite(count) && room.members.length !== count && !paged) refreshMembers();
  }

  function startPolling() {
    stopPolling();
    const room = state.current;
    if (room && room.joined && !room.presenceSeen) state.pollTimer = setInterval(refreshMembers, POLL_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  // -- messages -----------------------------------------------------------------------

  function advance(room, seq, epoch) {
    if (!Number.isFinite(seq) || !isText(epoch)) return;
    if (!room.cursor || room.cursor.epoch !== epoch) {
      room.cursor = { seq, epoch };
    } else if (seq > room.cursor.seq) {
      room.cursor.seq = seq;
    }
  }

  function messageItem(sender, text, mine) {
    const item = el("li", mine ? "msg mine" : "msg");
    const meta = el("div", "meta");
    meta.append(el("span", "sender", sender), el("time", "time"), el("span", "state"));
    item.append(meta, el("p", "text", text));
    return item;
  }

  function fill(room, item, envelope, itemState) {
    item.dataset.id = envelope.id;
    item.dataset.seq = String(envelope.seq);
    item.dataset.epoch = envelope.epoch;
    item.dataset.state = itemState;
    const time = item.querySelector("time");
    time.textContent = clock(envelope.timestamp);
    time.dateTime = new Date(envelope.timestamp).toISOString();
    item.querySelector(".state").textContent = itemState === "sent" ? "✓ sent" : "";
    room.byId.set(envelope.id, item);
  }

  // Returns true when the envelope was new to this page.
  function showEnvelope(room, envelope) {
    if (!envelope || envelope.room !== room.name || !isText(envelope.id)) return false;
    advance(room, envelope.seq, envelope.epoch);
    if (Number.isFinite(envelope.timestamp)) room.activity = Math.max(room.activity, envelope.timestamp);
    if (room.typing.delete(envelope.sender) && room === state.current) renderTyping(); // it was sent
    if (room.byId.has(envelope.id)) return false; // already shown (history overlap, own send)
    const pending = envelope.sender === state.name && pendingWithText(room, String(envelope.message));
    if (pending) {
      // Our own send, delivered before its answer: the bubble that is waiting becomes it
      // (its answer then finds it by id), rather than showing the message twice meanwhile.
      fill(room, pending, envelope, "sent");
      placeBySeq(room, pending);
      return false;
    }
    const item = messageItem(String(envelope.sender), String(envelope.message), envelope.sender === state.name);
    fill(room, item, envelope, "received");
    room.list.append(item);
    scrollDown(room);
    return true;
  }

  function pendingWithText(room, text) {
    for (const item of room.list.children) {
      if (item.dataset.state === "pending" && !item.dataset.id && item.querySelector(".text").textContent === text) {
        return item;
      }
    }
    return null;
  }

  function onBroadcast(envelope) {
    const room = envelope && state.rooms.get(envelope.room);
    if (!room || !room.joined) return;
    const added = showEnvelope(room, envelope);
    if (room === state.current) {
      markSeen(room);
    } else if (added) {
      room.unread += 1;
    }
    if (added && (room !== state.current || room.direct)) renderRooms(); // count, or the order of conversations
  }

  // -- typing -------------------------------------------------------------------------

  function onTyping(event) {
    const room = event && isText(event.room) && state.rooms.get(event.room);
    if (!room || !room.joined || !isText(event.user) || event.user === state.name) return;
    room.typing.set(event.user, Date.now() + TYPING_SHOWN_MS);
    if (room === state.current) renderTyping();
  }

  // "<user> is typing" under the room on screen, until TYPING_SHOWN_MS after the last event.
  function renderTyping() {
    clearTimeout(state.typingTimer);
    const room = state.current;
    const line = $("typing");
    const now = Date.now();
    const users = [];
    let next = Infinity;
    if (room && room.joined) {
      for (const [user, until] of room.typing) {
        if (until <= now) {
          room.typing.delete(user);
        } else {
          users.push(user);
          next = Math.min(next, until);
        }
      }
    }
    users.sort((a, b) => a.localeCompare(b));
    line.hidden = users.length === 0;
    line.textContent =
      users.length === 1
        ? `${users[0]} is typing…`
        : users.length === 2
          ? `${users[0]} and ${users[1]} are typing…`
          : users.length > 2
            ? "Several people are typing…"
            : "";
    if (next !== Infinity) state.typingTimer = setTimeout(renderTyping, next - now + 20);
  }

  // Tell the room on screen we are typing: at most once every TYPING_EVERY_MS, never queued
  // while disconnected (it would be stale by the time it went out).
  function typed() {
    const room = state.current;
    const socket = state.socket;
    if (!room || !room.joined || room.left || !socket || !socket.connected || !$("message").value.trim()) return;
    const now = Date.now();
    if (now - room.typedAt < TYPING_EVERY_MS) return;
    room.typedAt = now;
    socket.emit("typing", { room: room.name });
  }

  // A confirmed send goes where the server put it: right after the last message of the same
  // epoch with a lower seq (others' messages may have arrived while it was pending).
  function placeBySeq(room, item) {
    const seq = Number(item.dataset.seq);
    let after = null;
    for (const other of room.list.children) {
      if (other !== item && other.dataset.epoch === item.dataset.epoch && Number(other.dataset.seq) < seq) {
        after = other;
      }
    }
    if (after && after.nextElementSibling !== item) after.after(item);
  }

  // "Load older": the page before the oldest message shown, from Redis's window and then the
  // archive, back to the room's first message.
  const PAGE = 50;
  async function loadOlder() {
    const room = state.current;
    if (!room || !room.joined) return;
    const shown = [...room.list.children].map((li) => Number(li.dataset.seq)).filter((s) => s > 0);
    const before = shown.length ? Math.min(...shown) : null;
    if (before === 1) return olderDone(room);
    const answer = await call("history", before ? { room: room.name, before, limit: PAGE } : { room: room.name, limit: PAGE });
    if (!answer.ok) return notice(`Could not load older messages: ${answer.error.message}`);
    const messages = Array.isArray(answer.messages) ? answer.messages : [];
    for (const envelope of messages.slice().reverse()) {
      if (!envelope || room.byId.has(envelope.id) || envelope.room !== room.name) continue;
      const item = messageItem(String(envelope.sender), String(envelope.message), envelope.sender === state.name);
      fill(room, item, envelope, "received");
      const later = [...room.list.children].find(
        (li) => li.dataset.epoch === item.dataset.epoch && Number(li.dataset.seq) > envelope.seq,
      );
      if (later) later.before(item);
      else room.list.prepend(item);
    }
    if (messages.length < PAGE || messages.some((e) => e.seq === 1)) olderDone(room);
  }

  function olderDone(room) {
    room.allOlder = true;
    if (room === state.current) $("load-older").hidden = true;
  }

  // Search: the current room's archive, newest first, in a list above the conversation.
  async function search(text) {
    const room = state.current;
    if (!room || !room.joined) return;
    const answer = await call("search", { room: room.name, q: text });
    const list = $("search-results");
    list.replaceChildren();
    if (!answer.ok) {
      list.append(el("li", "msg separator", answer.error.code === "no_archive" ? "Search is not on for this server." : answer.error.message));
    } else if (!answer.messages.length) {
      list.append(el("li", "msg separator", "Nothing found."));
    } else {
      for (const e of answer.messages) {
        const item = messageItem(String(e.sender), String(e.message), e.sender === state.name);
        const time = item.querySelector("time");
        time.textContent = clock(e.timestamp);
        item.dataset.seq = String(e.seq);
        list.append(item);
      }
    }
    list.hidden = false;
    $("search-close").hidden = false;
  }

  function closeSearch() {
    $("search-results").hidden = true;
    $("search-results").replaceChildren();
    $("search-close").hidden = true;
  }

  // A message erased (its author asked to be forgotten): gone from every view of it.
  function onDeleted(event) {
    const room = event && state.rooms.get(event.room);
    const item = room && room.byId.get(event.id);
    if (!item) return;
    item.remove();
    room.byId.delete(event.id);
  }

  function separator(room, text) {
    room.list.append(el("li", "msg separator", text));
  }

  // Emit with an ack; always resolves, with the server's answer or an {ok: false} of our own.
  // Nothing is queued while disconnected (the client would send it on reconnect, unasked).
  async function call(event, data) {
    const socket = state.socket;
    if (!socket || !socket.connected) return { ok: false, error: { code: "disconnected", message: "not connected" } };
    try {
      return await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, data);
    } catch (err) {
      const lost = !socket.connected;
      const message = lost ? "connection lost before the answer" : "no answer from the server";
      return { ok: false, error: { code: lost ? "disconnected" : "timeout", message } };
    }
  }

  function send(room, text) {
    const item = messageItem(state.name, text, true);
    room.list.append(item);
    scrollDown(room);
    // One idempotency key per message: a retry of a send whose answer was lost is stored once.
    const key = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    deliver(room, item, text, key);
  }

  // `overloaded`: the node is shedding load for a moment and stored nothing. Sent again
  // after these pauses (with jitter), with the same key, before the page gives up.
  const OVERLOADED_RETRY_MS = [200, 500, 1000, 2000];

  async function deliver(room, item, text, key) {
    item.dataset.state = "pending";
    item.querySelector(".state").textContent = "sending…";
    const retry = item.querySelector("button.retry");
    if (retry) retry.remove();
    const payload = { room: room.name, message: text, key };
    let ack = await call("send_message", payload);
    for (const pause of OVERLOADED_RETRY_MS) {
      if (!ack || ack.ok || !ack.error || ack.error.code !== "overloaded") break;
      item.querySelector(".state").textContent = "server busy, sending again…";
      await new Promise((resolve) => setTimeout(resolve, pause * (0.75 + Math.random() / 2)));
      ack = await call("send_message", payload);
    }
    if ((!ack || !ack.ok) && item.dataset.id) return; // its broadcast came: it was stored
    if (!ack || !ack.ok) {
      item.dataset.state = "failed";
      item.querySelector(".state").textContent = `not sent: ${(ack && ack.error && ack.error.message) || "no answer"}`;
      const again = el("button", "retry", "Retry");
      again.type = "button";
      again.addEventListener("click", () => deliver(room, item, text, key));
      item.querySelector(".meta").append(again);
      return;
    }
    const shown = room.byId.get(ack.id);
    if (shown && shown !== item) {
      item.remove(); // the broadcast (or a rejoin's history) came first: keep it, mark it confirmed
      shown.dataset.state = "sent";
      shown.querySelector(".state").textContent = "✓ sent";
    } else {
      fill(room, item, { ...ack, room: room.name }, "sent");
      placeBySeq(room, item);
    }
    advance(room, ack.seq, ack.epoch);
  }

  // -- joining and rejoining ------------------------------------------------------------

  // The room's members and history, from a join ack or a room_joined event. Returns how the
  // recovery went: null (not a recovery), {missed: n}, or {lost: true}.
  async function admit(room, answer, recovering) {
    room.joined = true;
    room.everJoined = true;
    room.left = null;
    setMembers(room, answer.members, Number(answer.members_count));
    // The ack named every member, or the first page of them: a shorter list is a big room.
    room.pageSize = Number(answer.members_count) > room.members.length ? room.members.length : null;
    let outcome = null;
    if (recovering && answer.recovered === false) {
      separator(room, "messages may be missing here");
      room.cursor = null;
      outcome = { lost: true };
      const fresh = await enterCall(room, false);
      if (fresh && fresh.ok) (fresh.history || []).forEach((e) => showEnvelope(room, e));
    } else {
      const history = Array.isArray(answer.history) ? answer.history : [];
      const added = history.filter((e) => showEnvelope(room, e)).length;
      if (recovering) outcome = { missed: added };
    }
    advance(room, answer.seq, answer.epoch);
    if (room === state.current) {
      show(room);
    } else {
      renderRooms();
    }
    return outcome;
  }

  // join_room, or open_direct for a conversation (join_room of one is refused), from the
  // room's cursor when `recovering`.
  function enterCall(room, recovering) {
    const since = recovering && room.cursor ? { since: room.cursor.seq, epoch: room.cursor.epoch } : {};
    if (room.direct) return call("open_direct", { with: room.direct, ...since });
    return call("join_room", { room: room.name, ...since });
  }

  async function joinRoom(room) {
    const recovering = room.cursor !== null;
    const ack = await enterCall(room, recovering);
    if (state.rooms.get(room.name) !== room || room.left) return null; // left (or removed) meanwhile
    if (ack && ack.ok) return admit(room, ack, recovering);
    const message = (ack && ack.error && ack.error.message) || "no answer";
    if (room.everJoined) {
      notice(`Could not rejoin ${room.name}: ${message}`);
    } else if (state.rooms.size === 1) {
      leave();
      $("join-error").hidden = false;
      $("join-error").textContent = `Could not join: ${message}`;
    } else {
      forget(room);
      notice(`Could not join ${room.name}: ${message}`);
    }
    return null;
  }

  async function rejoinAll() {
    // Conversations only listed (never opened, never joined by the server) stay unopened.
    const rooms = [...state.rooms.values()].filter((r) => !r.left && (!r.direct || r.everJoined));
    const outcomes = await Promise.all(rooms.map(joinRoom));
    if (!state.reconnected) return;
    state.reconnected = false;
    const lost = rooms.filter((room, i) => outcomes[i] && outcomes[i].lost).map((room) => room.name);
    const missed = outcomes.reduce((n, o) => n + ((o && o.missed) || 0), 0);
    if (lost.length) {
      const where = state.rooms.size > 1 ? ` (in ${lost.join(", ")})` : "";
      notice(`Reconnected, but the messages sent while you were away could not be recovered${where}.`);
    } else if (outcomes.some((o) => o)) {
      notice(`Reconnected: ${missed} missed message${missed === 1 ? "" : "s"} recovered.`, "info");
    }
  }

  // -- events the server sends on its own (issue 13's server API) ---------------------

  // The server joined this connection to a room: show it as a joined room with that history.
  // A direct conversation (someone wrote to us) goes to the conversations list, its new
  // messages counted as unread.
  function onRoomJoined(event) {
    if (!event || !isText(event.room)) return;
    let room = state.rooms.get(event.room);
    const known = room !== undefined && !room.left;
    if (!room) {
      room = newRoom(event.room, directPeer(event.room));
      state.rooms.set(room.name, room);
    }
    const history = Array.isArray(event.history) ? event.history : [];
    const unseen = history.filter(
      (e) => e && !room.byId.has(e.id) && e.sender !== state.name && e.seq > seenSeq(room.name, e.epoch),
    ).length;
    admit(room, event, false);
    if (room !== state.current && room.direct) {
      room.unread += unseen;
      renderRooms();
    }
    if (!known) notice(room.direct ? `New conversation with ${room.direct}.` : `You were added to ${room.name}.`, "info");
  }

  // -- direct conversations -----------------------------------------------------------

  // Start (or enter) the conversation with `peer` and show it.
  async function openDirect(peer) {
    const existing = directWith(peer);
    if (existing && existing.joined && !existing.left) {
      if (existing !== state.current) show(existing);
      return;
    }
    if (!state.socket || !state.socket.connected) {
      notice(`Not connected: the conversation with ${peer} opens when you are back online.`);
      return;
    }
    if (existing) existing.opening = true;
    const recovering = Boolean(existing && existing.cursor);
    const ack = await (existing ? enterCall(existing, recovering) : call("open_direct", { with: peer }));
    if (existing) existing.opening = false;
    if (!ack || !ack.ok) {
      notice(`Could not open a conversation with ${peer}: ${(ack && ack.error && ack.error.message) || "no answer"}`);
      return;
    }
    let room = state.rooms.get(ack.room);
    if (!room) {
      room = newRoom(ack.room, isText(ack.with) ? ack.with : peer);
      state.rooms.set(room.name, room);
    }
    await admit(room, ack, recovering && room === existing);
    show(room);
  }

  // The conversations the server keeps for this name: listed, not entered until shown (or
  // until the server joins us on a new message). Unread: what came since this browser last
  // looked, when it remembers.
  async function listDirects() {
    const ack = await call("list_directs", {});
    if (!ack || !ack.ok || !Array.isArray(ack.directs)) return;
    for (const d of ack.directs) {
      if (!d || !isText(d.room) || !isText(d.with)) continue;
      let room = state.rooms.get(d.room);
      if (!room) {
        room = newRoom(d.room, d.with);
        state.rooms.set(room.name, room);
        const seen = seenAll()[d.room];
        if (seen && seen.epoch === d.epoch && Number.isFinite(d.seq)) room.unread = Math.max(0, d.seq - seen.seq);
      }
      if (Number.isFinite(d.at)) room.activity = Math.max(room.activity, d.at);
    }
    renderRooms();
  }

  function onRoomLeft(event) {
    const room = event && state.rooms.get(event.room);
    if (!room) return;
    room.joined = false;
    room.left = isText(event.reason) ? event.reason : "removed";
    room.members = [];
    if (room === state.current) {
      stopPolling();
      show(room);
    } else {
      renderRooms();
    }
    const why = isText(event.reason) ? `: ${event.reason}` : "";
    notice(`You were removed from ${room.name}${why}.`);
  }

  // The server is about to close this connection and means it: no automatic reconnection
  // (the server's close follows; the page closes first so no attempt can slip in between).
  function onDisconnectedByServer(event) {
    const socket = state.socket;
    if (!socket) return;
    state.kicked = true;
    socket.io.reconnection(false);
    clearTimeout(state.serverCloseTimer);
    const why = event && isText(event.reason) ? `: ${event.reason}` : "";
    notice(`The server disconnected you${why}. You will not be reconnected automatically.`);
    $("reconnect").hidden = false;
    setStatus("offline", "disconnected by the server");
    stopPolling();
    socket.disconnect();
  }

  // -- the connection -------------------------------------------------------------------

  function showOffline() {
    setStatus("offline", "offline");
    notice("You are offline. The page reconnects when the network is back.");
  }

  function connect() {
    const socket = io(CLIENT_OPTIONS);
    socket.auth = { username: state.name };
    state.socket = socket;
    const mine = (fn) => (...args) => {
      if (socket === state.socket) fn(...args);
    };

    const showTransport = (name) => {
      setStatus("connected", name === "polling" ? "connected (long-polling)" : "connected");
      $("status").dataset.transport = name;
    };
    socket.on("connect", mine(() => {
      // A connection that fell back to long-polling stays on it (the client drops websocket
      // from that connection's list); the next reconnection tries a websocket first again.
      showTransport(socket.io.engine.transport.name);
      clearTimeout(state.stableTimer);
      state.stableTimer = setTimeout(() => (state.serverCloses = 0), STABLE_MS);
      rejoinAll();
      listDirects();
    }));
    socket.on("disconnect", mine((reason) => {
      clearTimeout(state.stableTimer);
      stopPolling();
      if (state.kicked || reason === "io client disconnect") return;
      state.reconnected = true;
      if (navigator.onLine === false) {
        showOffline();
      } else {
        notice("Connection lost. Reconnecting…");
        setStatus("reconnecting", "reconnecting…");
      }
      if (reason === "io server disconnect") {
        const pause = Math.min(SERVER_CLOSE_CAP_MS, SERVER_CLOSE_BASE_MS * 2 ** state.serverCloses);
        state.serverCloses += 1;
        state.serverCloseTimer = setTimeout(mine(() => socket.connect()), pause * (0.5 + Math.random() / 2));
      }
    }));
    socket.io.on("reconnect_attempt", mine((attempt) => {
      if (navigator.onLine === false) showOffline();
      else setStatus("reconnecting", `reconnecting (attempt ${attempt})…`);
    }));
    socket.on("connect_error", mine((error) => {
      if (socket.active) return; // a network failure: the client tries again by itself
      // The server refused the connection itself (e.g. it requires a token): retrying won't help.
      leave();
      $("join-error").hidden = false;
      $("join-error").textContent = `The server refused the connection: ${(error && error.message) || "no reason given"}`;
    }));
    socket.on("broadcast_message", mine(onBroadcast));
    socket.on("presence", mine(onPresence));
    socket.on("message_deleted", mine(onDeleted));
    socket.on("room_joined", mine(onRoomJoined));
    socket.on("room_left", mine(onRoomLeft));
    socket.on("typing", mine(onTyping));
    socket.on("disconnected_by_server", mine(onDisconnectedByServer));
    socket.on("error", mine((error) => notice(`${(error && error.event) || "server"}: ${(error && error.message) || "error"}`)));
    socket.connect();
  }

  function reconnectByHand() {
    const socket = state.socket;
    if (!socket || !state.kicked) return;
    state.kicked = false;
    state.reconnected = true;
    state.serverCloses = 0;
    $("reconnect").hidden = true;
    notice("");
    setStatus("connecting", "connecting…");
    socket.io.reconnection(true);
    socket.connect();
  }

  function enter(name, roomName) {
    state.name = name;
    state.rooms.clear();
    state.kicked = false;
    state.reconnected = false;
    state.serverCloses = 0;
    const room = newRoom(roomName);
    state.rooms.set(roomName, room);
    notice("");
    $("join-error").hidden = true;
    $("join-form").hidden = true;
    $("chat").hidden = false;
    show(room);
    localStorage.setItem("chat.name", name);
    setStatus("connecting", "connecting…");
    connect();
    $("message").focus();
  }

  function close() {
    stopPolling();
    clearTimeout(state.serverCloseTimer);
    clearTimeout(state.stableTimer);
    const socket = state.socket;
    state.socket = null; // before disconnect(): its events are no longer ours
    if (socket) socket.disconnect();
  }

  // Back to the form: the connection and every room are given up.
  function leave() {
    close();
    state.rooms.clear();
    state.current = null;
    state.kicked = false;
    $("reconnect").hidden = true;
    $("chat").hidden = true;
    $("join-form").hidden = false;
    setStatus("idle", "not connected");
    history.replaceState(null, "", window.location.pathname);
    sessionStorage.removeItem("chat.shown");
    document.title = "chat_app";
  }

  // Leave the room on screen; the last one takes the page back to the form.
  function leaveCurrent() {
    const room = state.current;
    if (!room) return;
    if (state.rooms.size <= 1) {
      if (room.joined && state.socket && state.socket.connected) state.socket.emit("leave_room", { room: room.name });
      leave();
      return;
    }
    if (room.joined) call("leave_room", { room: room.name });
    forget(room);
  }

  function joinAnother(name) {
    const existing = state.rooms.get(name);
    if (existing && !existing.left) {
      show(existing);
      return;
    }
    if (existing) forget(existing);
    const room = newRoom(name);
    state.rooms.set(name, room);
    show(room);
    if (state.socket && state.socket.connected) joinRoom(room);
    // otherwise the next connect joins it with the others
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
    const room = state.current;
    if (!text.trim() || !room || !room.joined) return;
    $("message").value = "";
    send(room, text);
  });

  $("join-another").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("another-room").value.trim();
    if (!name || !state.socket) return;
    $("another-room").value = "";
    joinAnother(name);
  });

  $("open-direct").addEventListener("submit", (event) => {
    event.preventDefault();
    const peer = $("direct-with").value.trim();
    if (!peer || !state.socket) return;
    if (peer === state.name) {
      notice("A conversation is with someone else: pick another name.");
      return;
    }
    $("direct-with").value = "";
    openDirect(peer);
  });

  $("message").addEventListener("input", typed);
  $("leave").addEventListener("click", leaveCurrent);
  $("load-older").addEventListener("click", loadOlder);
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("search-q").value.trim();
    if (text) search(text);
  });
  $("search-close").addEventListener("click", closeSearch);
  $("reconnect").addEventListener("click", reconnectByHand);
  window.addEventListener("offline", () => {
    if (state.socket && !state.kicked) showOffline();
  });
  window.addEventListener("online", () => {
    const socket = state.socket;
    if (!socket || state.kicked) return;
    if (socket.connected) {
      setStatus("connected", "connected");
      notice("");
    } else {
      setStatus("reconnecting", "reconnecting…");
      notice("Connection lost. Reconnecting…");
    }
  });

  // A reload comes straight back into the room this tab showed. A link with #room (shared,
  // or opened by another site) only fills the form: joining under the saved name, which
  // tells the room's members that this person is there, takes a click on Join.
  const savedName = localStorage.getItem("chat.name") || "";
  let linkedRoom = "";
  try {
    linkedRoom = decodeURIComponent(window.location.hash.slice(1));
  } catch (err) {
    // a hand-typed hash that is not valid percent-encoding: ignore it
  }
  $("name").value = savedName;
  if (linkedRoom) $("room").value = linkedRoom;
  if (savedName && linkedRoom && sessionStorage.getItem("chat.shown") === linkedRoom) {
    enter(savedName, linkedRoom);
  } else if (savedName && linkedRoom) {
    $("join").focus();
  }
})();
