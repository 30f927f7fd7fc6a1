// The console's only script: countdowns to deadlines, and the case page's live part
// (server-sent events carrying HTML the server rendered and escaped). Pages work
// without it, less live.
"use strict";

function timeLeft(due) {
  let seconds = Math.round((Date.parse(due) - Date.now()) / 1000);
  const overdue = seconds < 0;
  seconds = Math.abs(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  const text = h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(s).padStart(2, "0")}s`;
  return overdue ? `overdue ${text}` : text;
}

function tick() {
  for (const el of document.querySelectorAll(".countdown[data-due]")) {
    el.textContent = timeLeft(el.dataset.due);
  }
}

function fromHtml(html) {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content;
}

function addItem(html) {
  const fragment = fromHtml(html);
  const item = fragment.firstElementChild;
  const timeline = document.getElementById("timeline");
  if (!item || !timeline || document.getElementById(item.id)) return;
  const seq = Number(item.dataset.seq);
  const after = [...timeline.children].find((li) => Number(li.dataset.seq) > seq);
  timeline.insertBefore(item, after || null);
}

function live() {
  const box = document.getElementById("live");
  if (!box || !box.dataset.events || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const down = document.getElementById("gateway-down");
  const say = (text, tone) => {
    status.textContent = text;
    status.className = `live-status ${tone || ""}`;
    if (down) down.hidden = tone !== "offline";
  };
  const source = new EventSource(box.dataset.events);
  source.addEventListener("open", () => say("Live", "up"));
  source.addEventListener("item", (e) => addItem(e.data));
  source.addEventListener("header", (e) => {
    document.getElementById("case-header").replaceChildren(fromHtml(e.data));
    tick();
  });
  source.addEventListener("view", (e) => {
    box.replaceChildren(fromHtml(e.data));
    tick();
  });
  source.addEventListener("status", (e) => {
    const [tone, text] = e.data.split(/\|(.*)/s);
    say(text, tone);
    if (tone === "done") source.close();
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) say("Connection to the console lost; reconnecting…", "down");
  });
  window.addEventListener("pagehide", () => source.close());
}

tick();
setInterval(tick, 1000);
live();
