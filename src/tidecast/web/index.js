// Lists streams from the public API and refreshes every few seconds.
"use strict";
function item(s) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = s.watch_url;
  if (s.live) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = "LIVE";
    a.appendChild(b);
  }
  a.appendChild(document.createTextNode(s.title || s.name));
  if (s.live && s.video) {
    const m = document.createElement("span");
    m.className = "muted";
    m.textContent = "  " + s.video;
    a.appendChild(m);
  }
  li.appendChild(a);
  return li;
}
async function refresh() {
  try {
    const r = await fetch("/api/v1/streams");
    const streams = await r.json();
    const live = streams.filter((s) => s.live);
    document.getElementById("live").replaceChildren(...live.map(item));
    document.getElementById("all").replaceChildren(...streams.map(item));
    document.getElementById("empty").hidden = live.length > 0;
  } catch (e) {
    console.warn("stream list refresh failed", e);
  }
}
refresh();
setInterval(refresh, 3000);
