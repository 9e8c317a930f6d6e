// ringpush.js: the browser and Node client of ringpush's JSON protocol (PROTOCOL.md).
//
// An ES module with no dependencies. It owns one WebSocket at a time and keeps, across
// reconnects, the channels the application wants with each one's epoch and last offset, so
// every reconnect resubscribes with `since` and the node replays what was missed.
//
// Invariants:
// - At most one socket is live; a socket the client gave up on (dead, replaced by a newer
//   attempt) has its handlers detached first, so nothing it says later reaches the app.
// - A channel's offset only moves forward within one epoch: a message at or below it is a
//   duplicate and is dropped, never handed to the application twice.
// - Reconnect delays use full jitter: uniform in [0, min(ceiling, base * 2^attempt)).
// - A token-expiry close (4003) never reconnects with the same token: it asks `getToken`,
//   or stops when the client was given a fixed `token`.

/** Close codes the node sends, and what the client does on each. */
export const CloseCode = Object.freeze({
  /** Idle timeout, or the node is draining for shutdown: reconnect now. */
  GOING_AWAY: 1001,
  /** The service restarts (proxies send it): reconnect now. */
  SERVICE_RESTART: 1012,
  /** A newer connection of the same (session, tab) replaced this one. */
  REPLACED: 4001,
  /** The node drains with --drain-spread: reconnect now (a load balancer picks another node). */
  RECONNECT_ELSEWHERE: 4002,
  /** The connection's token expired: reconnect only with a fresh token. */
  TOKEN_EXPIRED: 4003,
});

/** Codes after which the client reconnects at once (within `nowJitterMs`), not after a backoff. */
export const RECONNECT_NOW_CODES = Object.freeze([
  CloseCode.GOING_AWAY,
  CloseCode.SERVICE_RESTART,
  CloseCode.RECONNECT_ELSEWHERE,
]);

/** The `sessionStorage` key that holds this tab's id. */
export const TAB_STORAGE_KEY = "ringpush.tab";

const DEFAULTS = Object.freeze({
  baseMs: 500,
  ceilingMs: 30_000,
  resetAfterMs: 10_000,
  nowJitterMs: 250,
  // The longest a healthy connection stays silent with the node's defaults (--ping-interval
  // 30s, --idle-timeout 75s): the first ping after 30 s, then one every 45 s (the node's
  // next ping after a pong is due at idle-timeout minus ping-interval).
  pingIntervalMs: 45_000,
  pingGraceMs: 10_000,
  connectTimeoutMs: 10_000,
  refreshBeforeMs: 30_000,
});

/**
 * Full-jitter backoff: a delay drawn uniformly from [0, min(ceilingMs, baseMs * 2^attempt)).
 * `attempt` counts failed attempts since the last stable connection, from 0.
 */
export function backoffDelay(attempt, { baseMs, ceilingMs }, random = Math.random) {
  const window = backoffWindow(attempt, { baseMs, ceilingMs });
  return Math.floor(random() * window);
}

/** The upper bound of `backoffDelay` for `attempt` (the exponential part, capped). */
export function backoffWindow(attempt, { baseMs, ceilingMs }) {
  // 2^attempt overflows to Infinity for huge attempts, which Math.min caps.
  return Math.min(ceilingMs, baseMs * 2 ** Math.max(0, attempt));
}

/**
 * This tab's id: kept in `sessionStorage`, which survives a reload of the tab but is not
 * shared with other tabs, so a reload replaces its own connection and two tabs never replace
 * each other. Without a storage (Node) each call makes a fresh id.
 */
export function tabId(storage = globalThis.sessionStorage, key = TAB_STORAGE_KEY) {
  const known = safeGet(storage, key);
  if (known && /^[A-Za-z0-9_.:-]{1,128}$/.test(known)) {
    return known;
  }
  return newTabId(storage, key);
}

/** Makes, stores and returns a new tab id. */
export function newTabId(storage = globalThis.sessionStorage, key = TAB_STORAGE_KEY) {
  const id = randomId();
  safeSet(storage, key, id);
  return id;
}

/** An error the node answered a command with (PROTOCOL.md "Errors"), or a local failure. */
export class RingpushError extends Error {
  constructor(code, reason, command) {
    super(`${reason} (${code})`);
    this.name = "RingpushError";
    /** The node's error code (400, 403, …), or 0 for a local failure (not connected). */
    this.code = code;
    /** The node's short English reason. */
    this.reason = reason;
    /** The op of the refused command. */
    this.command = command;
  }
}

/** Opens a client and starts connecting. See ringpush.d.ts for the options and events. */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export class Client {
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = url;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: --experimental-websocket or the ws package)");
    }
    this.random = options.random ?? Math.random;
    this.storage = options.storage === undefined ? globalThis.sessionStorage : options.storage;
    this.tab = options.tab ?? tabId(this.storage);
    /** @type {Map<string, {epoch: string|null, offset: number|null, waiters: Array}>} */
    this.channels = new Map();
    this.listeners = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.state = "idle";
    this.socket = null;
    this.token = options.token ?? null;
    this.timers = { retry: null, live: null, stable: null, connect: null, refresh: null };
    for (const channel of options.channels ?? []) {
      this.channels.set(channel, { epoch: null, offset: null, waiters: [] });
    }
    for (const [event, handler] of [
      ["state", options.onState],
      ["message", options.onMessage],
      ["recovery_failed", options.onRecoveryFailed],
      ["error", options.onError],
      ["subscribed", options.onSubscribed],
    ]) {
      if (handler) this.on(event, handler);
    }
    this.open("start");
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, handler) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(handler);
    return () => this.listeners.get(event)?.delete(handler);
  }

  /**
   * Subscribes to `channel` (now and on every reconnect). Resolves with the `subscribed`
   * answer once the node sends it; rejects with a RingpushError if the node refuses.
   */
  subscribe(channel) {
    let entry = this.channels.get(channel);
    if (entry?.live && this.state === "open") {
      const { epoch, offset } = entry;
      return Promise.resolve({ op: "subscribed", channel, epoch, offset, recovered: true });
    }
    if (!entry) {
      entry = { epoch: null, offset: null, waiters: [] };
      this.channels.set(channel, entry);
      if (this.state === "open") this.sendSubscribe(channel, entry);
    }
    return new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  /** Stops receiving `channel`, now and after reconnects. */
  unsubscribe(channel) {
    const entry = this.channels.get(channel);
    if (!entry) return Promise.resolve();
    this.channels.delete(channel);
    for (const waiter of entry.waiters) {
      waiter.reject(new RingpushError(0, "unsubscribed before the answer", "subscribe"));
    }
    if (this.state !== "open") return Promise.resolve();
    // 404 means the node had already dropped it: the outcome the caller asked for.
    return this.command({ op: "unsubscribe", channel }).catch((error) => {
      if (error.code !== 404) throw error;
    });
  }

  /**
   * Publishes `data` (a string is a text payload; an ArrayBuffer or typed array a binary
   * one) to `channel`. Resolves with `{channel, epoch, offset}`. Needs `--client-publish`
   * on the node, or a token with a `publish` claim.
   */
  publish(channel, data) {
    const body = typeof data === "string" ? { data } : { data_b64: toBase64(data) };
    return this.command({ op: "publish", channel, ...body });
  }

  /**
   * Asks `getToken` for a fresh token and hands it to the live connection (`refresh`), so
   * the node moves the connection's expiry. Resolves with the node's answer (`exp`).
   */
  async refresh() {
    const token = await this.freshToken("refresh");
    const answer = await this.command({ op: "refresh", token });
    this.scheduleRefresh();
    return answer;
  }

  /** Closes the connection for good: no reconnect follows. */
  close() {
    this.clearTimers();
    if (this.socket) this.abandon(this.socket, 1000, "client closed");
    this.failPending("client closed");
    this.setState("closed", { reason: "client_closed" });
  }

  // ---- the connection's life ----

  async open(why) {
    this.clearTimers();
    this.setState("connecting", { attempt: this.attempt, why });
    let token = this.token;
    if (this.options.getToken && (token === null || tokenExpired(token))) {
      try {
        token = await this.freshToken(why);
      } catch (error) {
        this.emit("error", error);
        this.scheduleRetry({ code: 0, reason: "getToken failed" });
        return;
      }
    }
    if (this.state !== "connecting") return;
    let socket;
    try {
      socket = new this.WebSocket(this.socketUrl(token), this.protocols(token));
    } catch (error) {
      this.emit("error", error);
      this.scheduleRetry({ code: 0, reason: String(error.message ?? error) });
      return;
    }
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    this.timers.connect = setTimeout(() => {
      this.abandon(socket, 4000, "connect timeout");
      this.lost({ code: 0, reason: "connect timeout" });
    }, this.options.connectTimeoutMs);
    socket.onopen = () => this.opened(socket);
    socket.onmessage = (event) => this.received(socket, event.data);
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.lost({ code: event.code, reason: event.reason });
    };
    socket.onerror = () => {};
  }

  async freshToken(why) {
    if (!this.options.getToken) {
      throw new RingpushError(0, "no getToken to ask for a fresh token", "refresh");
    }
    const token = await this.options.getToken({ tab: this.tab, reason: why });
    this.token = token;
    return token;
  }

  opened(socket) {
    if (socket !== this.socket) return;
    clearTimeout(this.timers.connect);
    this.setState("open", { tab: this.tab });
    this.alive();
    // A connection that stays up this long proves the node is back: backoff starts over.
    this.timers.stable = setTimeout(() => {
      this.attempt = 0;
    }, this.options.resetAfterMs);
    for (const [channel, entry] of this.channels) this.sendSubscribe(channel, entry);
    this.scheduleRefresh();
  }

  /**
   * With `getToken`, refreshes the live connection's token `refreshBeforeMs` before its
   * JWT `exp`, so it is never closed 4003. A token that lives shorter than that margin is
   * left to expire (the 4003 path then asks getToken); a failed refresh is reported and
   * left to that path too.
   */
  scheduleRefresh() {
    clearTimeout(this.timers.refresh);
    const exp = this.options.getToken && this.token ? tokenExp(this.token) : null;
    const { refreshBeforeMs } = this.options;
    if (exp === null || !(refreshBeforeMs > 0) || this.state !== "open") return;
    const delayMs = exp * 1000 - Date.now() - refreshBeforeMs;
    if (delayMs <= 0) return;
    const socket = this.socket;
    this.timers.refresh = setTimeout(() => {
      if (socket !== this.socket || this.state !== "open") return;
      this.refresh().catch((error) => this.emit("error", error));
    }, delayMs);
  }

  lost({ code, reason }) {
    this.clearTimers();
    this.failPending("connection lost");
    for (const entry of this.channels.values()) entry.live = false;
    if (this.state === "closed") return;
    if (code === CloseCode.TOKEN_EXPIRED) {
      this.token = null;
      if (!this.options.getToken) {
        this.setState("closed", { code, reason: "token_expired" });
        return;
      }
      // `open` asks getToken before the socket is made, since the token is now null.
      this.setState("reconnecting", { code, reason, delayMs: 0, attempt: this.attempt });
      this.timers.retry = setTimeout(() => this.open("token_expired"), 0);
      return;
    }
    if (code === CloseCode.REPLACED) {
      // Another connection took this (session, tab): a duplicated tab shares our
      // sessionStorage. Taking a new id ends the tug of war; a reload never gets here, as
      // the page that held the old connection is gone. A tab the client cannot change (an
      // option, or a fixed token's `tab` claim) would only replace the other one back.
      if (this.options.tab !== undefined || (this.options.token && !this.options.getToken)) {
        this.setState("closed", { code, reason: "replaced" });
        return;
      }
      this.tab = newTabId(this.storage);
      // With auth on the tab is the token's claim: getToken mints one for the new id.
      if (this.options.getToken) this.token = null;
    }
    this.scheduleRetry({ code, reason });
  }

  scheduleRetry({ code, reason }) {
    if (this.state === "closed") return;
    const now = RECONNECT_NOW_CODES.includes(code) || code === CloseCode.REPLACED;
    const delayMs = now
      ? Math.floor(this.random() * this.options.nowJitterMs)
      : backoffDelay(this.attempt, this.options, this.random);
    const attempt = this.attempt;
    this.attempt += 1;
    this.setState("reconnecting", { code, reason, delayMs, attempt });
    this.timers.retry = setTimeout(() => this.open("reconnect"), delayMs);
  }

  /** Restarts the dead-connection timer: any frame from the node proves the path works. */
  alive() {
    clearTimeout(this.timers.live);
    const { pingIntervalMs, pingGraceMs } = this.options;
    const socket = this.socket;
    this.timers.live = setTimeout(() => {
      if (socket !== this.socket) return;
      // No ping for the interval plus grace: a NAT or proxy dropped the connection
      // without a FIN. A close handshake cannot complete there, so the socket is abandoned.
      this.socket = null;
      this.abandon(socket, 4000, "no ping");
      this.lost({ code: 0, reason: "dead connection (no ping)" });
    }, pingIntervalMs + pingGraceMs);
  }

  abandon(socket, code, reason) {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (socket === this.socket) this.socket = null;
    try {
      socket.close(code, reason);
    } catch {
      // Closing a socket that never opened may throw in some runtimes; it is gone anyway.
    }
  }

  // ---- frames ----

  received(socket, raw) {
    if (socket !== this.socket) return;
    this.alive();
    if (typeof raw !== "string") return;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.op) {
      case undefined:
        return this.message(frame);
      case "ping":
        return this.send({ op: "pong" });
      case "subscribed":
        return this.subscribed(frame);
      case "gap":
        return this.gap(frame);
      case "error":
        return this.refused(frame);
      default:
        // published, unsubscribed, refreshed, and ops added later answer a command by id.
        return this.answer(frame.id, frame, null);
    }
  }

  message(frame) {
    const data = frame.data ?? (frame.data_b64 !== undefined ? fromBase64(frame.data_b64) : undefined);
    if (typeof frame.channel !== "string") {
      // A message without a channel is addressed to the session (`POST /send/<session>`).
      this.emit("message", { channel: null, session: frame.session ?? null, data });
      return;
    }
    const entry = this.channels.get(frame.channel);
    if (!entry) return;
    if (entry.offset !== null && frame.offset <= entry.offset) return;
    entry.offset = frame.offset;
    this.emit("message", { channel: frame.channel, offset: frame.offset, epoch: entry.epoch, data });
  }

  subscribed(frame) {
    const entry = this.channels.get(frame.channel);
    this.answer(frame.id, frame, null);
    if (!entry) return;
    const asked = entry.sinceSent;
    entry.sinceSent = null;
    if (asked && !frame.recovered) {
      this.emit("recovery_failed", {
        channel: frame.channel,
        since: asked,
        epoch: frame.epoch,
        offset: frame.offset,
      });
    }
    if (!asked || !frame.recovered) {
      // Nothing is replayed: live messages follow the answer's offset.
      entry.offset = frame.offset;
    }
    entry.epoch = frame.epoch;
    entry.live = true;
    this.emit("subscribed", { channel: frame.channel, epoch: frame.epoch, offset: frame.offset, recovered: frame.recovered });
    for (const waiter of entry.waiters.splice(0)) waiter.resolve(frame);
  }

  /**
   * `{"op":"gap","channel","epoch","offset":K}` (nodes joined through Redis): messages of
   * the channel before K of that epoch may never arrive, and the one at K comes next. Told
   * as a recovery failure (`reason: "gap"`) unless this client already has everything
   * before K; either way the channel's position moves to (epoch, K - 1), so the message at
   * K is delivered (a new epoch starts low again) and a later resume asks from there.
   */
  gap(frame) {
    const entry = this.channels.get(frame.channel);
    if (!entry || typeof frame.offset !== "number" || typeof frame.epoch !== "string") return;
    const before = frame.offset - 1;
    const covered = entry.epoch === frame.epoch && entry.offset !== null && entry.offset >= before;
    if (!covered) {
      this.emit("recovery_failed", {
        channel: frame.channel,
        since: { epoch: entry.epoch, offset: entry.offset },
        epoch: frame.epoch,
        offset: before,
        reason: "gap",
      });
    }
    if (!covered || entry.epoch !== frame.epoch) {
      entry.epoch = frame.epoch;
      entry.offset = before;
    }
  }

  refused(frame) {
    const error = new RingpushError(frame.code, frame.reason, this.pending.get(frame.id)?.op);
    const waiting = this.pending.get(frame.id);
    if (waiting?.op === "subscribe" && waiting.channel) {
      const entry = this.channels.get(waiting.channel);
      // 409: already subscribed; 503: the node is draining, the next connection retries.
      if (entry && frame.code !== 409 && frame.code !== 503) {
        // The node will not subscribe it: stop asking on every reconnect.
        this.channels.delete(waiting.channel);
        for (const waiter of entry.waiters.splice(0)) waiter.reject(error);
      }
    }
    if (!this.answer(frame.id, null, error)) this.emit("error", error);
  }

  answer(id, value, error) {
    const waiting = this.pending.get(id);
    if (!waiting) return false;
    this.pending.delete(id);
    if (error) waiting.reject(error);
    else waiting.resolve(value);
    return true;
  }

  sendSubscribe(channel, entry) {
    const command = { op: "subscribe", channel };
    if (entry.epoch !== null && entry.offset !== null) {
      command.since = { epoch: entry.epoch, offset: entry.offset };
      entry.sinceSent = command.since;
    }
    this.command(command).catch(() => {});
  }

  command(fields) {
    if (this.state !== "open" || !this.socket) {
      return Promise.reject(new RingpushError(0, "not connected", fields.op));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, op: fields.op, channel: fields.channel });
      this.send({ ...fields, id });
    });
  }

  send(object) {
    this.socket?.send(JSON.stringify(object));
  }

  failPending(reason) {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const waiting of pending) waiting.reject(new RingpushError(0, reason, waiting.op));
  }

  socketUrl(token) {
    const url = new URL(this.url, globalThis.location?.href);
    url.searchParams.set("format", "json");
    if (this.options.session) {
      url.searchParams.set("session", this.options.session);
      url.searchParams.set("tab", this.tab);
    }
    if (token && this.options.tokenIn === "query") url.searchParams.set("token", token);
    return url.toString();
  }

  protocols(token) {
    if (!token || this.options.tokenIn === "query") return undefined;
    return ["ringpush.v1", `bearer.${token}`];
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", state, detail);
  }

  emit(event, ...args) {
    for (const handler of this.listeners.get(event) ?? []) {
      try {
        handler(...args);
      } catch (error) {
        // An application handler that throws must not break the client's bookkeeping.
        if (event !== "error") this.emit("error", error);
      }
    }
  }

  clearTimers() {
    for (const name of Object.keys(this.timers)) {
      clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
  }
}

// ---- helpers ----

/** Whether a JWT's `exp` has passed (a token that is not a readable JWT is taken as valid). */
export function tokenExpired(token, nowMs = Date.now()) {
  const exp = tokenExp(token);
  return exp !== null && exp * 1000 <= nowMs;
}

/** A JWT's `exp` (seconds since the epoch), or null when the token is not a readable JWT. */
export function tokenExp(token) {
  const payload = token.split(".")[1];
  if (!payload) return null;
  try {
    const json = new TextDecoder().decode(fromBase64(payload.replace(/-/g, "+").replace(/_/g, "/")));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

function randomId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function safeGet(storage, key) {
  try {
    return storage?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

function safeSet(storage, key, value) {
  try {
    storage?.setItem(key, value);
  } catch {
    // Storage may be disabled (privacy modes): the id then lives as long as the page.
  }
}

function toBase64(data) {
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

function fromBase64(text) {
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
