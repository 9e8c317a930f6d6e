// What the browser tests need around the client: the real ringpush binary (RINGPUSH_BIN),
// Debian's chromium driven by playwright-core, a TCP proxy that can cut or black-hole the
// connections through it, and HS256 tokens. Nothing here skips: a missing piece is an error
// that says how to install it (scripts/browser-deps.sh).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export { sleep };

const INSTALL = "run scripts/browser-deps.sh (apt-get install chromium; npm ci in clients/js)";

/** The ringpush binary under test. */
export function ringpushBin() {
  const bin = process.env.RINGPUSH_BIN;
  if (!bin || !existsSync(bin)) {
    throw new Error(`RINGPUSH_BIN must name the ringpush binary (got ${bin}); cargo test --test browser sets it`);
  }
  return bin;
}

/** Launches headless chromium (Debian's, never a downloaded one). */
export async function launchBrowser() {
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (error) {
    throw new Error(`playwright-core is not installed: ${INSTALL} (${error.message})`);
  }
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`no chromium at ${executablePath}: ${INSTALL}`);
  }
  // Root in a container has no user namespace for chromium's sandbox.
  return chromium.launch({ executablePath, args: ["--no-sandbox"] });
}

/** A running node; `stop()` drains it with SIGTERM and waits for its exit. */
export class Node {
  static async start({ args = [], env = {}, listen = "127.0.0.1:0", admin = "127.0.0.1:0" } = {}) {
    const child = spawn(
      ringpushBin(),
      [
        "--no-pin", "--stats-interval", "0", "--shards", "1",
        "--sq-entries", "256", "--cq-entries", "2048",
        "--listen", listen, "--admin", admin, "--drain-timeout", "2s",
        ...args,
      ],
      { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    const node = new Node(child);
    const line = await node.waitLine(/listening on (\S+) admin (\S+)/, 10_000);
    const [, ws, adminAddr] = line.match(/listening on (\S+) admin (\S+)/);
    node.ws = ws;
    node.admin = adminAddr;
    node.wsUrl = `ws://${ws}/ws`;
    node.adminUrl = `http://${adminAddr}`;
    return node;
  }

  constructor(child) {
    this.child = child;
    this.lines = [];
    this.waiters = [];
    this.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [child.stdout, child.stderr]) {
      let rest = "";
      stream.on("data", (chunk) => {
        rest += chunk;
        const parts = rest.split("\n");
        rest = parts.pop();
        for (const part of parts) this.line(part);
      });
    }
  }

  line(text) {
    this.lines.push(text);
    for (const waiter of [...this.waiters]) {
      if (waiter.pattern.test(text)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve(text);
      }
    }
  }

  waitLine(pattern, timeoutMs) {
    const seen = this.lines.find((line) => pattern.test(line));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = { pattern, resolve };
      this.waiters.push(waiter);
      setTimeout(() => {
        if (!this.waiters.includes(waiter)) return;
        reject(new Error(`no line matching ${pattern} in ${timeoutMs} ms:\n${this.lines.join("\n")}`));
      }, timeoutMs);
    });
  }

  /** POSTs `body` as text to an admin path; returns the parsed JSON answer. */
  async post(path, body) {
    const response = await fetch(`${this.adminUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body,
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${text}`);
    return JSON.parse(text);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGTERM");
    return this.exited;
  }
}

/**
 * A TCP proxy to `port` on loopback. `cut()` resets every connection through it,
 * `refuse(true)` closes new ones at once, `blackhole()` keeps the current ones open but
 * forwards nothing more either way (a NAT that forgot them), and `retarget(port)` sends new
 * connections to another port (a load balancer that took a draining node out).
 */
export async function tcpProxy(port) {
  const pairs = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, "127.0.0.1");
    const pair = { client, upstream, hole: false };
    pairs.add(pair);
    client.on("data", (data) => pair.hole || upstream.write(data));
    upstream.on("data", (data) => pair.hole || client.write(data));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", () => pair.hole || end());
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      for (const pair of pairs) {
        pair.client.resetAndDestroy();
        pair.upstream.destroy();
      }
      pairs.clear();
    },
    refuse(on) {
      refusing = on;
    },
    retarget(other) {
      port = other;
    },
    blackhole() {
      for (const pair of pairs) pair.hole = true;
    },
    close() {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      server.close();
    },
  };
}

/** An HS256 JWT signed with `secret`. */
export function hs256(claims, secret) {
  const part = (object) => Buffer.from(JSON.stringify(object)).toString("base64url");
  const head = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  const signature = createHmac("sha256", secret).update(head).digest("base64url");
  return `${head}.${signature}`;
}

/**
 * Opens a page on the admin origin (its `/healthz`, a plain document) and starts a client
 * from `/demo/ringpush.js` in it, recording every callback in `window.log`.
 * `options.useGetToken` makes getToken call the page's `mintToken` (exposed by the test).
 */
export async function clientPage(context, node, url, options = {}) {
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
  await page.goto(`${node.adminUrl}/healthz`);
  await startClient(page, url, options);
  return page;
}

/** Starts the recorded client in `page` (again after a reload). */
export async function startClient(page, url, options = {}) {
  await page.evaluate(
    async ({ url, options }) => {
      const ringpush = await import("/demo/ringpush.js");
      window.log = [];
      const record = (type) => (...args) =>
        window.log.push({ type, at: performance.now(), args: JSON.parse(JSON.stringify(args)) });
      const extra = {};
      if (options.useGetToken) {
        extra.getToken = async (context) => {
          record("getToken")(context);
          return window.mintToken(context.tab, options.tokenLifetimeS ?? 2);
        };
      }
      window.client = ringpush.connect(url, {
        ...options,
        ...extra,
        onState: record("state"),
        onMessage: record("message"),
        onSubscribed: record("subscribed"),
        onRecoveryFailed: record("recovery_failed"),
        onError: (error) => record("error")(String(error)),
      });
    },
    { url, options },
  );
}

/** The recorded callbacks of one type, in order. */
export function events(page, type) {
  return page.evaluate((type) => window.log.filter((entry) => entry.type === type), type);
}

/**
 * Waits until the page has recorded `count` callbacks of `type` matching `match` (a subset of
 * their argument list, e.g. `{0: "open"}`); returns the matching ones.
 */
export async function waitEvents(page, type, count, match = {}, timeoutMs = 10_000) {
  try {
    await page.waitForFunction(
      ({ type, count, match }) => {
        const fits = (value, want) =>
          want === null || typeof want !== "object"
            ? value === want
            : value !== null && typeof value === "object" && Object.entries(want).every(([k, v]) => fits(value[k], v));
        return window.log.filter((e) => e.type === type && fits(e.args, match)).length >= count;
      },
      { type, count, match },
      { timeout: timeoutMs, polling: 50 },
    );
  } catch (error) {
    const log = await page.evaluate(() => window.log).catch(() => "(page gone)");
    throw new Error(`waiting for ${count} × ${type} ${JSON.stringify(match)}: ${error.message}\nlog: ${JSON.stringify(log)}`);
  }
  return page.evaluate(
    ({ type, match }) => {
      const fits = (value, want) =>
        want === null || typeof want !== "object"
          ? value === want
          : value !== null && typeof value === "object" && Object.entries(want).every(([k, v]) => fits(value[k], v));
      return window.log.filter((e) => e.type === type && fits(e.args, match));
    },
    { type, match },
  );
}
