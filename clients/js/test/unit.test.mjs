// Unit tests of the client without a browser or a node: the backoff and jitter math, the tab
// id, token expiry, and the reconnect decisions driven through a fake WebSocket.

import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, backoffWindow, connect, newTabId, tabId, tokenExpired } from "../ringpush.js";

test("the backoff window doubles from base up to the ceiling", () => {
  const backoff = { baseMs: 500, ceilingMs: 30_000 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((attempt) => backoffWindow(attempt, backoff)),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
  );
  assert.equal(backoffWindow(5000, backoff), 30_000, "a huge attempt stays capped");
});

test("full jitter spans the whole window: from 0 up to just under it", () => {
  const backoff = { baseMs: 500, ceilingMs: 30_000 };
  assert.equal(backoffDelay(3, backoff, () => 0), 0);
  assert.equal(backoffDelay(3, backoff, () => 0.5), 2000);
  assert.equal(backoffDelay(3, backoff, () => 0.999999), 3999);
  assert.equal(backoffDelay(20, backoff, () => 0.999999), 29_999);
});

test("jittered delays of many clients spread over the window", () => {
  const backoff = { baseMs: 1000, ceilingMs: 60_000 };
  const delays = Array.from({ length: 2000 }, () => backoffDelay(4, backoff));
  const window = backoffWindow(4, backoff);
  assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d < window));
  const quarters = [0, 1, 2, 3].map((q) => delays.filter((d) => Math.floor((d / window) * 4) === q).length);
  for (const count of quarters) assert.ok(count > 350 && count < 650, `quarters ${quarters}`);
});

test("the tab id lives in the storage: kept across calls, replaced on demand", () => {
  const map = new Map();
  const storage = { getItem: (k) => map.get(k) ?? null, setItem: (k, v) => map.set(k, v) };
  const first = tabId(storage);
  assert.match(first, /^[0-9a-f]{24}$/);
  assert.equal(tabId(storage), first);
  const second = newTabId(storage);
  assert.notEqual(second, first);
  assert.equal(tabId(storage), second);
  map.set("ringpush.tab", "not a valid/id");
  assert.notEqual(tabId(storage), "not a valid/id");
  assert.notEqual(tabId(null), tabId(null), "without storage every client is a tab of its own");
});

test("tokenExpired reads a JWT's exp", () => {
  const jwt = (claims) => `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;
  assert.equal(tokenExpired(jwt({ exp: 100 }), 100_000), true);
  assert.equal(tokenExpired(jwt({ exp: 101 }), 100_000), false);
  assert.equal(tokenExpired("opaque-token", 0), false);
});

/** A WebSocket stand-in the test drives by hand. */
class FakeSocket {
  static made = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    FakeSocket.made.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.closed = true;
  }
  open() {
    this.onopen?.();
  }
  frame(object) {
    this.onmessage?.({ data: JSON.stringify(object) });
  }
  drop(code, reason = "") {
    this.onclose?.({ code, reason });
  }
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

function fakeClient(options) {
  FakeSocket.made = [];
  const states = [];
  const client = connect("ws://node.test/ws", {
    WebSocket: FakeSocket,
    storage: null,
    onState: (state, detail) => states.push([state, detail]),
    ...options,
  });
  return { client, states };
}

test("4003 asks getToken for a fresh token before reconnecting", async () => {
  const reasons = [];
  let n = 0;
  const { client, states } = fakeClient({
    getToken: ({ reason }) => {
      reasons.push(reason);
      n += 1;
      return `token-${n}`;
    },
  });
  await tick();
  assert.deepEqual(FakeSocket.made[0].protocols, ["ringpush.v1", "bearer.token-1"]);
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4003, "token expired");
  await tick(5);
  assert.deepEqual(reasons, ["start", "token_expired"]);
  assert.deepEqual(FakeSocket.made[1].protocols, ["ringpush.v1", "bearer.token-2"]);
  assert.ok(states.some(([state, detail]) => state === "reconnecting" && detail.code === 4003));
  client.close();
});

test("4003 with a fixed token closes for good", async () => {
  const { states } = fakeClient({ token: "fixed" });
  await tick();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4003, "token expired");
  await tick(20);
  assert.equal(FakeSocket.made.length, 1);
  assert.deepEqual(states.at(-1), ["closed", { code: 4003, reason: "token_expired" }]);
});

test("a drain close reconnects within nowJitterMs; a failure backs off", async () => {
  const { client, states } = fakeClient({ nowJitterMs: 100, baseMs: 1000, random: () => 0.5 });
  await tick();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(1001, "server shutting down");
  const retry = states.at(-1);
  assert.equal(retry[0], "reconnecting");
  assert.equal(retry[1].delayMs, 50);
  await tick(60);
  assert.equal(FakeSocket.made.length, 2);
  FakeSocket.made[1].drop(1006);
  assert.equal(states.at(-1)[1].delayMs, 1000, "attempt 1: half of base * 2");
  client.close();
});

test("a spread drain's 4002 reconnects within nowJitterMs, as 1001 does", async () => {
  const { client, states } = fakeClient({ nowJitterMs: 100, baseMs: 1000, random: () => 0.5 });
  await tick();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4002, "reconnect elsewhere");
  const retry = states.at(-1);
  assert.equal(retry[0], "reconnecting");
  assert.equal(retry[1].code, 4002);
  assert.equal(retry[1].delayMs, 50, "half of nowJitterMs, not a backoff");
  await tick(60);
  assert.equal(FakeSocket.made.length, 2);
  client.close();
});

test("no frame for interval plus grace: the socket is abandoned and replaced", async () => {
  const { client, states } = fakeClient({ pingIntervalMs: 200, pingGraceMs: 100, baseMs: 10 });
  await tick();
  const first = FakeSocket.made[0];
  first.open();
  await tick(200);
  first.frame({ op: "ping" });
  assert.deepEqual(first.sent.at(-1), { op: "pong" });
  await tick(150);
  assert.equal(first.closed, undefined, "a ping 150 ms ago keeps it alive");
  await tick(400);
  assert.equal(first.closed, true);
  assert.ok(states.some(([state, detail]) => state === "reconnecting" && /no ping/.test(detail.reason)));
  client.close();
});

test("resume: since carries the last offset, duplicates are dropped, failure is told", async () => {
  const messages = [];
  const failures = [];
  const { client } = fakeClient({
    channels: ["news"],
    baseMs: 1,
    onMessage: (m) => messages.push(m.offset),
    onRecoveryFailed: (f) => failures.push(f),
  });
  await tick();
  const first = FakeSocket.made[0];
  first.open();
  assert.deepEqual(first.sent[0], { op: "subscribe", channel: "news", id: 1 });
  first.frame({ op: "subscribed", id: 1, channel: "news", epoch: "E", offset: 4, recovered: false });
  first.frame({ channel: "news", offset: 5, data: "a" });
  first.frame({ channel: "news", offset: 5, data: "a" });
  first.drop(1006);
  await tick(5);
  const second = FakeSocket.made[1];
  second.open();
  assert.deepEqual(second.sent[0].since, { epoch: "E", offset: 5 });
  second.frame({ op: "subscribed", id: second.sent[0].id, channel: "news", epoch: "F", offset: 9, recovered: false });
  second.frame({ channel: "news", offset: 10, data: "b" });
  assert.deepEqual(messages, [5, 10]);
  assert.deepEqual(failures, [{ channel: "news", since: { epoch: "E", offset: 5 }, epoch: "F", offset: 9 }]);
  client.close();
});

test("4001 takes a fresh tab id (and token); with a fixed tab it stops instead", async () => {
  const tabs = [];
  const { client } = fakeClient({
    session: "alice",
    getToken: ({ tab }) => {
      tabs.push(tab);
      return `token-for-${tab}`;
    },
  });
  await tick();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4001, "replaced");
  await tick(300);
  assert.equal(tabs.length, 2);
  assert.notEqual(tabs[0], tabs[1]);
  assert.equal(client.tab, tabs[1]);
  assert.match(FakeSocket.made[1].url, new RegExp(`tab=${tabs[1]}`));
  client.close();

  const fixed = fakeClient({ session: "alice", tab: "t1" });
  await tick();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4001, "replaced");
  await tick(300);
  assert.equal(FakeSocket.made.length, 1);
  assert.deepEqual(fixed.states.at(-1), ["closed", { code: 4001, reason: "replaced" }]);
});

test("subscribe on a live channel resolves at once; a refused one is dropped", async () => {
  const { client } = fakeClient({ channels: ["news"] });
  await tick();
  const socket = FakeSocket.made[0];
  socket.open();
  socket.frame({ op: "subscribed", id: 1, channel: "news", epoch: "E", offset: 3, recovered: false });
  const again = await client.subscribe("news");
  assert.deepEqual([again.epoch, again.offset], ["E", 3]);
  assert.equal(socket.sent.length, 1, "no second subscribe on the wire");
  const refused = client.subscribe("secret");
  socket.frame({ op: "error", id: 2, code: 403, reason: "not allowed" });
  await assert.rejects(refused, (error) => error.code === 403);
  socket.drop(1006);
  await tick(600);
  const resent = FakeSocket.made[1];
  resent.open();
  assert.deepEqual(resent.sent.map((c) => c.channel), ["news"]);
  client.close();
});

test("with getToken, the token is refreshed on the live connection before its exp", async () => {
  const jwt = (exp) => `e30.${Buffer.from(JSON.stringify({ exp })).toString("base64url")}.sig`;
  const exp = Math.floor(Date.now() / 1000) + 3;
  const reasons = [];
  const { client } = fakeClient({
    refreshBeforeMs: exp * 1000 - Date.now() - 100,
    getToken: ({ reason }) => {
      reasons.push(reason);
      return jwt(reasons.length === 1 ? exp : exp + 3600);
    },
  });
  await tick();
  const socket = FakeSocket.made[0];
  socket.open();
  await tick(400);
  assert.deepEqual(reasons, ["start", "refresh"]);
  const refresh = socket.sent.at(-1);
  assert.equal(refresh.op, "refresh");
  assert.equal(refresh.token, jwt(exp + 3600));
  socket.frame({ op: "refreshed", id: refresh.id, exp: exp + 3600 });
  assert.equal(FakeSocket.made.length, 1, "no reconnect");
  client.close();
});

test("a gap notice is told as a recovery failure and keeps the offsets consistent", async () => {
  const messages = [];
  const failures = [];
  const { client } = fakeClient({
    channels: ["news"],
    baseMs: 1,
    onMessage: (m) => messages.push([m.epoch, m.offset]),
    onRecoveryFailed: (f) => failures.push(f),
  });
  await tick();
  const first = FakeSocket.made[0];
  first.open();
  first.frame({ op: "subscribed", id: 1, channel: "news", epoch: "E", offset: 4, recovered: false });
  first.frame({ channel: "news", offset: 5, data: "a" });
  // The node missed 6 and 7: told once, then 8 is delivered.
  first.frame({ op: "gap", channel: "news", epoch: "E", offset: 8 });
  first.frame({ channel: "news", offset: 8, data: "b" });
  // Redis lost the channel: a new epoch starting at 1 is delivered, not taken for a duplicate.
  first.frame({ op: "gap", channel: "news", epoch: "F", offset: 1 });
  first.frame({ channel: "news", offset: 1, data: "c" });
  // A notice for what this client already has is no failure.
  first.frame({ op: "gap", channel: "news", epoch: "F", offset: 2 });
  first.frame({ channel: "news", offset: 2, data: "d" });
  first.frame({ channel: "news", offset: 2, data: "d" });
  // A gap for a channel the client does not hold is ignored.
  first.frame({ op: "gap", channel: "other", epoch: "F", offset: 9 });
  assert.deepEqual(messages, [["E", 5], ["E", 8], ["F", 1], ["F", 2]]);
  assert.deepEqual(failures, [
    { channel: "news", since: { epoch: "E", offset: 5 }, epoch: "E", offset: 7, reason: "gap" },
    { channel: "news", since: { epoch: "E", offset: 8 }, epoch: "F", offset: 0, reason: "gap" },
  ]);
  // The next resume asks from the last message handled in the new epoch.
  first.drop(1006);
  await tick(5);
  const second = FakeSocket.made[1];
  second.open();
  assert.deepEqual(second.sent[0].since, { epoch: "F", offset: 2 });
  client.close();
});
