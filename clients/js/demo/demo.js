// The demo page's script: the client library driven from a form, as an application would.
// It never sees an admin token; publishing uses the JSON protocol's client publish.
import { connect } from "/demo/ringpush.js";

const $ = (id) => document.getElementById(id);
const port = document.querySelector("meta[name=ringpush-ws-port]").content;
const params = new URLSearchParams(location.search);
const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
$("url").value = params.get("ws") ?? `ws://${host}:${port}/ws`;

let client = null;
const wanted = new Set((params.get("channels") ?? "news").split(",").filter(Boolean));

function log(text) {
  const line = `${new Date().toLocaleTimeString()}  ${text}\n`;
  $("log").textContent = (line + $("log").textContent).slice(0, 8000);
}

function showState(state, detail) {
  $("state").textContent = state;
  $("state").dataset.state = state;
  const parts = [];
  if (detail.code) parts.push(`close ${detail.code}${detail.reason ? ` ${detail.reason}` : ""}`);
  if (detail.delayMs !== undefined) parts.push(`retry in ${detail.delayMs} ms`);
  $("detail").textContent = parts.join(", ");
  log(`state ${state}${parts.length ? ` (${parts.join(", ")})` : ""}`);
}

function showChannels() {
  const box = $("channels");
  box.replaceChildren();
  for (const channel of wanted) {
    const chip = document.createElement("span");
    chip.textContent = channel;
    const drop = document.createElement("button");
    drop.type = "button";
    drop.className = "secondary";
    drop.textContent = "×";
    drop.title = `unsubscribe from ${channel}`;
    drop.onclick = () => {
      wanted.delete(channel);
      client?.unsubscribe(channel).catch((error) => log(`unsubscribe: ${error.message}`));
      showChannels();
    };
    chip.append(drop);
    box.append(chip);
  }
}

function showMessage(message) {
  const row = document.createElement("tr");
  const data = typeof message.data === "string" ? message.data : `(${message.data.length} bytes)`;
  for (const text of [
    new Date().toLocaleTimeString(),
    message.channel ?? `session ${message.session ?? ""}`,
    message.offset ?? "",
    data,
  ]) {
    const cell = document.createElement("td");
    cell.textContent = String(text);
    row.append(cell);
  }
  row.lastChild.className = "data";
  $("messages").prepend(row);
  while ($("messages").children.length > 200) $("messages").lastChild.remove();
}

function start() {
  client?.close();
  const token = $("token").value.trim();
  client = connect($("url").value, {
    channels: [...wanted],
    ...(token ? { token } : {}),
    onState: showState,
    onMessage: showMessage,
    onSubscribed: (s) => log(`subscribed ${s.channel} epoch ${s.epoch} offset ${s.offset}${s.recovered ? " (recovered)" : ""}`),
    onRecoveryFailed: (f) => log(`recovery failed on ${f.channel}: messages after ${f.since.offset} are gone; reload your state`),
    onError: (error) => log(`error ${error.message}`),
  });
  $("tab").textContent = client.tab;
}

$("connect").onsubmit = (event) => {
  event.preventDefault();
  start();
};
$("disconnect").onclick = () => client?.close();
$("subscribe").onsubmit = (event) => {
  event.preventDefault();
  const channel = $("channel").value.trim();
  if (!channel || wanted.has(channel)) return;
  wanted.add(channel);
  showChannels();
  client?.subscribe(channel).catch((error) => {
    wanted.delete(channel);
    showChannels();
    log(`subscribe ${channel}: ${error.message}`);
  });
};
$("publish").onsubmit = async (event) => {
  event.preventDefault();
  const channel = $("publish-channel").value.trim();
  try {
    const answer = await client.publish(channel, $("publish-data").value);
    $("publish-result").textContent = `published at offset ${answer.offset}`;
  } catch (error) {
    const hint = error.code === 403 ? " (start the node with --client-publish, or use a token with a publish claim)" : "";
    $("publish-result").textContent = `refused: ${error.message}${hint}`;
  }
};

showChannels();
start();
