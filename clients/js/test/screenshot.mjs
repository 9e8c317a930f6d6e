// Takes docs/demo.png: the demo page against a fresh node, with two channels and a few
// messages. `RINGPUSH_BIN=target/release/ringpush node test/screenshot.mjs ../../docs/demo.png`
import { launchBrowser, Node, sleep } from "./harness.mjs";

const out = process.argv[2] ?? "demo.png";
const node = await Node.start({ args: ["--client-publish", "--history-size", "100"] });
const browser = await launchBrowser();
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  await page.goto(`${node.adminUrl}/demo?channels=news,room.7`);
  await page.waitForSelector("#state[data-state=open]");
  await node.post("/publish/news", JSON.stringify({ headline: "ringpush 0.1 released" }));
  await node.post("/publish/room.7", "alice: anyone around?");
  await page.fill("#publish-channel", "room.7");
  await page.fill("#publish-data", "bob: here, from the demo page");
  await page.click("#publish button");
  await node.post("/publish/news", JSON.stringify({ headline: "1,000,000 connections on 2 cores" }));
  await sleep(300);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await node.stop();
}
