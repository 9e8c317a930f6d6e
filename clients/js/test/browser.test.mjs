// The client library in headless chromium against the real node (issue 13): sessions and
// tabs, restarts with jittered reconnects (and, with --broker, resume across the restart),
// resume without a gap, dead-connection detection, token expiry, and the demo page. Run by `cargo test --test browser` (tests/browser.rs),
// which sets RINGPUSH_BIN; scripts/browser-deps.sh installs chromium and playwright-core.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import { clientPage, events, hs256, launchBrowser, Node, sleep, startClient, tcpProxy, waitEvents } from "./harness.mjs";

const OPEN = { 0: "open" };
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** Runs `body` with a fresh browser context (its own sessionStorage) and cleans up after. */
async function withContext(body) {
  const context = await browser.newContext();
  const cleanups = [];
  try {
    await body(context, (cleanup) => cleanups.push(cleanup));
  } finally {
    await context.close();
    for (const cleanup of cleanups.reverse()) await cleanup();
  }
}

test("two tabs of one session both get a /send; a reload replaces only its own tab", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const node = await Node.start();
    defer(() => node.stop());
    const options = { session: "alice", channels: ["news"] };
    const a = await clientPage(context, node, node.wsUrl, options);
    const b = await clientPage(context, node, node.wsUrl, options);
    await waitEvents(a, "subscribed", 1);
    await waitEvents(b, "subscribed", 1);
    const tabA = await a.evaluate(() => window.client.tab);
    const tabB = await b.evaluate(() => window.client.tab);
    assert.notEqual(tabA, tabB, "each tab has its own id");

    assert.deepEqual(await node.post("/send/alice", "to both"), { session: "alice", connections: 2 });
    for (const page of [a, b]) {
      const [message] = await waitEvents(page, "message", 1);
      assert.deepEqual(message.args[0], { channel: null, session: "alice", data: "to both" });
    }

    await a.reload();
    await startClient(a, node.wsUrl, options);
    await waitEvents(a, "state", 1, OPEN);
    assert.equal(await a.evaluate(() => window.client.tab), tabA, "a reload keeps its tab id");
    assert.deepEqual(await node.post("/send/alice", "after reload"), { session: "alice", connections: 2 });
    await waitEvents(a, "message", 1, { 0: { data: "after reload" } });
    await waitEvents(b, "message", 2);
    const statesB = await events(b, "state");
    assert.deepEqual(
      statesB.map((e) => e.args[0]),
      ["connecting", "open"],
      "the other tab was never closed or replaced",
    );

    // A duplicated tab copies sessionStorage, so it claims A's (session, tab): A is
    // replaced (4001), takes a fresh tab id and comes back; nobody fights over one id.
    const c = await context.newPage();
    await c.goto(`${node.adminUrl}/healthz`);
    await c.evaluate((tab) => sessionStorage.setItem("ringpush.tab", tab), tabA);
    await startClient(c, node.wsUrl, options);
    await waitEvents(c, "state", 1, OPEN);
    await waitEvents(a, "state", 1, { 0: "reconnecting", 1: { code: 4001 } });
    await waitEvents(a, "state", 2, OPEN);
    const newTabA = await a.evaluate(() => window.client.tab);
    assert.notEqual(newTabA, tabA);
    assert.equal(await a.evaluate(() => sessionStorage.getItem("ringpush.tab")), newTabA);
    assert.deepEqual(await node.post("/send/alice", "three"), { session: "alice", connections: 3 });
  }));

test("the node restarted under two tabs: jittered reconnects, recovery failure reported", { timeout: 40_000 }, () =>
  withContext(async (context, defer) => {
    let node = await Node.start({ args: ["--history-size", "100"] });
    defer(() => node.stop());
    const options = { channels: ["news"], baseMs: 400, ceilingMs: 1600, nowJitterMs: 250 };
    const pages = [
      await clientPage(context, node, node.wsUrl, options),
      await clientPage(context, node, node.wsUrl, options),
    ];
    for (const page of pages) await waitEvents(page, "subscribed", 1);
    const before = await node.post("/publish/news", "before");
    for (const page of pages) await waitEvents(page, "message", 1);

    const { ws, admin } = node;
    await node.stop();
    for (const page of pages) {
      const [drained] = await waitEvents(page, "state", 1, { 0: "reconnecting", 1: { code: 1001 } });
      assert.ok(drained.args[1].delayMs < 250, "a drain close reconnects at once (within nowJitterMs)");
    }
    // The node stays away while the tabs retry with backoff.
    await sleep(2500);
    node = await Node.start({ args: ["--history-size", "100"], listen: ws, admin });
    for (const page of pages) {
      const [failed] = await waitEvents(page, "recovery_failed", 1, {}, 15_000);
      assert.equal(failed.args[0].channel, "news");
      assert.deepEqual(failed.args[0].since, { epoch: before.epoch, offset: 1 });
      assert.notEqual(failed.args[0].epoch, before.epoch, "a restarted node has a new epoch");
    }
    await node.post("/publish/news", "after");
    const delays = [];
    for (const page of pages) {
      const [, second] = await waitEvents(page, "message", 2);
      assert.deepEqual(second.args[0].data, "after");
      assert.equal(second.args[0].offset, 1);
      const retries = (await events(page, "state")).filter((e) => e.args[0] === "reconnecting");
      assert.ok(retries.length >= 2, "several attempts while the node was away");
      for (const { args: [, detail] } of retries.slice(1)) {
        const window = Math.min(1600, 400 * 2 ** detail.attempt);
        assert.ok(detail.delayMs >= 0 && detail.delayMs < window, `delay ${detail.delayMs} in [0, ${window})`);
      }
      delays.push(retries.map((e) => e.args[1].delayMs));
    }
    assert.notDeepEqual(delays[0], delays[1], "full jitter: the two tabs did not retry in lockstep");
  }));

test("with --broker, the node killed and restarted under two tabs of one session: jittered reconnects, resume, the away messages once", { timeout: 40_000 }, () =>
  withContext(async (context, defer) => {
    // tests/browser.rs starts a redis-server (tests/util/redis_server.rs) for the suite.
    const redis = process.env.RINGPUSH_REDIS_URL;
    assert.ok(redis, "RINGPUSH_REDIS_URL must name the suite's redis-server; cargo test --test browser sets it");
    const args = ["--broker", redis, "--history-size", "100"];
    let node = await Node.start({ args });
    defer(() => node.stop());
    const other = await Node.start({ args });
    defer(() => other.stop());
    const options = { session: "carol", channels: ["live"], baseMs: 400, ceilingMs: 1600, nowJitterMs: 250 };
    const pages = [
      await clientPage(context, node, node.wsUrl, options),
      await clientPage(context, node, node.wsUrl, options),
    ];
    for (const page of pages) await waitEvents(page, "subscribed", 1);
    const first = await node.post("/publish/live", "m1");
    // Offsets count from the suite's Redis: 1 on a fresh one.
    const at = (i) => first.offset + i - 1;
    for (const page of pages) await waitEvents(page, "message", 1);

    // Killed (no drain close): the tabs see the connection fail and back off.
    const { ws, admin } = node;
    node.child.kill("SIGKILL");
    await node.exited;
    for (const page of pages) await waitEvents(page, "state", 1, { 0: "reconnecting" });
    // Published through another node while the tabs are away: Redis keeps them.
    for (let i = 2; i <= 4; i++) {
      const answer = await other.post("/publish/live", `m${i}`);
      assert.deepEqual([answer.epoch, answer.offset], [first.epoch, at(i)]);
    }
    // The node stays away while the tabs retry with backoff, then comes back on its ports.
    await sleep(2500);
    node = await Node.start({ args, listen: ws, admin });
    for (const page of pages) {
      const [, resumed] = await waitEvents(page, "subscribed", 2, {}, 15_000);
      assert.deepEqual(resumed.args[0], { channel: "live", epoch: first.epoch, offset: at(4), recovered: true });
    }
    await node.post("/publish/live", "m5");
    const delays = [];
    for (const page of pages) {
      await waitEvents(page, "message", 5);
      await sleep(200);
      const all = await events(page, "message");
      assert.deepEqual(
        all.map((e) => [e.args[0].epoch, e.args[0].offset, e.args[0].data]),
        Array.from({ length: 5 }, (_, i) => [first.epoch, at(i + 1), `m${i + 1}`]),
        "every message once, in order, the away ones replayed on resume",
      );
      assert.deepEqual(await events(page, "recovery_failed"), []);
      const retries = (await events(page, "state")).filter((e) => e.args[0] === "reconnecting");
      assert.ok(retries.length >= 2, "several attempts while the node was away");
      for (const { args: [, detail] } of retries) {
        const window = Math.min(1600, 400 * 2 ** detail.attempt);
        assert.ok(detail.delayMs >= 0 && detail.delayMs < window, `delay ${detail.delayMs} in [0, ${window})`);
      }
      delays.push(retries.map((e) => e.args[1].delayMs));
    }
    assert.notDeepEqual(delays[0], delays[1], "full jitter: the two tabs did not retry in lockstep");
  }));

test("a spread drain's 4002 sends the client at once to another node", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const draining = await Node.start({ args: ["--drain-spread", "1s"] });
    defer(() => draining.stop());
    const other = await Node.start();
    defer(() => other.stop());
    const port = (node) => Number(node.ws.split(":").pop());
    const balancer = await tcpProxy(port(draining));
    defer(() => balancer.close());
    // A backoff would wait seconds: only a "reconnect now" close comes back within 1 s.
    const options = { channels: ["news"], baseMs: 5000, ceilingMs: 5000, nowJitterMs: 250 };
    const page = await clientPage(context, draining, `ws://127.0.0.1:${balancer.port}/ws`, options);
    await waitEvents(page, "subscribed", 1);

    // The load balancer takes the draining node out, then the node drains.
    balancer.retarget(port(other));
    const exited = draining.stop();
    const [closed] = await waitEvents(page, "state", 1, { 0: "reconnecting", 1: { code: 4002 } });
    assert.equal(closed.args[1].reason, "reconnect elsewhere");
    assert.ok(closed.args[1].delayMs < 250, `delay ${closed.args[1].delayMs}: not at once`);
    const [, reopened] = await waitEvents(page, "state", 2, OPEN, 3000);
    assert.ok(reopened.at - closed.at < 1000, `back after ${reopened.at - closed.at} ms`);
    await waitEvents(page, "subscribed", 2);
    const published = await other.post("/publish/news", "from the other node");
    assert.equal(published.subscribers, 1, "the client is subscribed on the other node");
    await waitEvents(page, "message", 1, { 0: { data: "from the other node" } }, 5000);
    assert.deepEqual(await exited, { code: 0, signal: null });
    assert.ok(draining.lines.some((l) => l.includes("event=drain_spread_start connections=1")));
  }));

test("a dropped connection resumes with no gap and no duplicate", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const node = await Node.start({ args: ["--history-size", "100"] });
    defer(() => node.stop());
    const proxy = await tcpProxy(Number(node.ws.split(":").pop()));
    defer(() => proxy.close());
    const page = await clientPage(context, node, `ws://127.0.0.1:${proxy.port}/ws`, {
      channels: ["feed"],
      baseMs: 200,
      ceilingMs: 400,
    });
    await waitEvents(page, "subscribed", 1);
    for (let i = 1; i <= 3; i++) await node.post("/publish/feed", `m${i}`);
    await waitEvents(page, "message", 3);

    proxy.refuse(true);
    proxy.cut();
    await waitEvents(page, "state", 1, { 0: "reconnecting" });
    for (let i = 4; i <= 8; i++) await node.post("/publish/feed", `m${i}`);
    proxy.refuse(false);
    const subscribed = await waitEvents(page, "subscribed", 2, {}, 15_000);
    assert.equal(subscribed[1].args[0].recovered, true);
    for (let i = 9; i <= 10; i++) await node.post("/publish/feed", `m${i}`);
    const messages = await waitEvents(page, "message", 10);
    await sleep(200);
    const all = await events(page, "message");
    assert.deepEqual(
      all.map((e) => [e.args[0].offset, e.args[0].data]),
      Array.from({ length: 10 }, (_, i) => [i + 1, `m${i + 1}`]),
      "every message once, in order",
    );
    assert.equal(messages.length, 10);
    assert.deepEqual(await events(page, "recovery_failed"), []);
  }));

test("no ping for the interval plus grace: the connection is dropped and resumed", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const node = await Node.start({ args: ["--history-size", "100", "--ping-interval", "1s", "--idle-timeout", "2s"] });
    defer(() => node.stop());
    const proxy = await tcpProxy(Number(node.ws.split(":").pop()));
    defer(() => proxy.close());
    const page = await clientPage(context, node, `ws://127.0.0.1:${proxy.port}/ws`, {
      channels: ["beat"],
      pingIntervalMs: 1000,
      pingGraceMs: 1000,
      baseMs: 200,
      ceilingMs: 400,
    });
    await waitEvents(page, "subscribed", 1);
    // Pings keep a quiet connection alive well past interval + grace.
    await sleep(3000);
    assert.deepEqual((await events(page, "state")).map((e) => e.args[0]), ["connecting", "open"]);

    proxy.blackhole();
    const lostAt = await page.evaluate(() => performance.now());
    await node.post("/publish/beat", "while dead");
    const [dead] = await waitEvents(page, "state", 1, { 0: "reconnecting" }, 10_000);
    assert.match(dead.args[1].reason, /no ping/);
    const detectedMs = dead.at - lostAt;
    assert.ok(detectedMs >= 1000 && detectedMs < 4000, `detected after ${detectedMs} ms`);
    const [message] = await waitEvents(page, "message", 1, {}, 10_000);
    assert.equal(message.args[0].data, "while dead");
    const subscribed = await events(page, "subscribed");
    assert.equal(subscribed[1].args[0].recovered, true);
  }));

test("token expiry (4003) asks getToken and reconnects; a fixed token stops; refresh avoids it", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const secret = "browser-test-secret-0123456789abcdef";
    const node = await Node.start({
      args: ["--auth", "required", "--token-key-env", "RP_BROWSER_KEY"],
      env: { RP_BROWSER_KEY: secret },
    });
    defer(() => node.stop());
    const mint = (tab, lifetimeS = 2) =>
      hs256({ sub: "alice", exp: Math.floor(Date.now() / 1000) + lifetimeS, channels: ["*"], tab }, secret);
    await context.exposeFunction("mintToken", mint);
    // Tokens of 4 s refreshed 2 s before their exp: the connection outlives several of them.
    const refreshing = await clientPage(context, node, node.wsUrl, {
      channels: ["news"],
      useGetToken: true,
      tokenLifetimeS: 4,
      refreshBeforeMs: 2000,
    });
    const refreshingSince = Date.now();

    const page = await clientPage(context, node, node.wsUrl, { channels: ["news"], useGetToken: true });
    await waitEvents(page, "subscribed", 1);
    await waitEvents(page, "state", 1, { 0: "reconnecting", 1: { code: 4003 } }, 10_000);
    const calls = await waitEvents(page, "getToken", 2);
    assert.equal(calls[0].args[0].reason, "start");
    assert.equal(calls[1].args[0].reason, "token_expired");
    await waitEvents(page, "subscribed", 2);
    await node.post("/publish/news", "with a fresh token");
    await waitEvents(page, "message", 1, { 0: { data: "with a fresh token" } });

    const fixed = await clientPage(context, node, node.wsUrl, { channels: ["news"], token: mint("fixed") });
    await waitEvents(fixed, "subscribed", 1);
    const [closed] = await waitEvents(fixed, "state", 1, { 0: "closed" }, 10_000);
    assert.deepEqual(closed.args[1], { code: 4003, reason: "token_expired" });
    await sleep(500);
    assert.equal((await events(fixed, "state")).filter((e) => e.args[0] === "open").length, 1);

    await sleep(Math.max(0, refreshingSince + 5500 - Date.now()));
    const reasons = (await events(refreshing, "getToken")).map((e) => e.args[0].reason);
    assert.deepEqual(reasons.slice(0, 3), ["start", "refresh", "refresh"]);
    assert.deepEqual((await events(refreshing, "state")).map((e) => e.args[0]), ["connecting", "open"]);
    await node.post("/publish/news", "still the first connection");
    await waitEvents(refreshing, "message", 1, { 0: { data: "still the first connection" } });
  }));

test("the demo page loads, connects and shows a published message", { timeout: 30_000 }, () =>
  withContext(async (context, defer) => {
    const node = await Node.start({ args: ["--client-publish"] });
    defer(() => node.stop());
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (error) => problems.push(String(error)));
    page.on("console", (message) => message.type() === "error" && problems.push(message.text()));
    await page.setViewportSize({ width: 1000, height: 900 });
    await page.goto(`${node.adminUrl}/demo`);
    await page.waitForSelector("#state[data-state=open]", { timeout: 10_000 });
    await page.waitForFunction(() => document.querySelector("#log").textContent.includes("subscribed news"));

    await node.post("/publish/news", "hello from the backend");
    await page.waitForSelector("#messages td.data:text('hello from the backend')", { timeout: 10_000 });
    await page.fill("#publish-data", "hello from the page");
    await page.click("#publish button");
    await page.waitForSelector("#messages td.data:text('hello from the page')", { timeout: 10_000 });
    assert.match(await page.textContent("#publish-result"), /published at offset 2/);
    assert.deepEqual(problems, []);

    const artifacts = process.env.BROWSER_ARTIFACTS ?? path.join("..", "..", "target", "browser");
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: path.join(artifacts, "demo.png"), fullPage: true });
  }));
