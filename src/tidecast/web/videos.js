// The VOD library: recorded broadcasts (poster, duration, date) and clips.
"use strict";
function fmtDuration(s) {
  s = Math.round(s || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(sec).padStart(2, "0");
}
function card(v, poster, meta) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = v.page_url;
  if (poster) {
    const img = document.createElement("img");
    img.src = poster;
    img.alt = "";
    img.loading = "lazy";
    a.appendChild(img);
  }
  const t = document.createElement("div");
  t.textContent = v.title || v.stream;
  const m = document.createElement("div");
  m.className = "muted";
  m.textContent = meta;
  a.append(t, m);
  li.appendChild(a);
  return li;
}
async function refresh() {
  const stream = document.getElementById("stream").value;
  const q = stream ? "?stream=" + encodeURIComponent(stream) : "";
  const [bs, cs] = await Promise.all([
    fetch("/api/v1/broadcasts" + q).then((r) => r.json()),
    fetch("/api/v1/clips").then((r) => r.json()),
  ]);
  const shown = bs.filter((b) => b.vod || b.live);
  document.getElementById("broadcasts").replaceChildren(...shown.map((b) =>
    card(b, b.poster_url, (b.live ? "LIVE · " : "") + b.stream + " · " +
      new Date(b.started_at).toLocaleString() + " · " + fmtDuration(b.duration))));
  document.getElementById("clips").replaceChildren(...cs.filter((c) => !stream || c.stream === stream)
    .map((c) => card(c, null, c.stream + " · clip · " + fmtDuration(c.duration))));
  document.getElementById("empty").hidden = shown.length > 0;
}
async function streams() {
  const sel = document.getElementById("stream");
  for (const s of await fetch("/api/v1/streams").then((r) => r.json())) {
    const o = document.createElement("option");
    o.value = o.textContent = s.name;
    sel.appendChild(o);
  }
  const wanted = new URLSearchParams(location.search).get("stream");
  if (wanted) sel.value = wanted;
  sel.addEventListener("change", refresh);
}
streams().then(refresh);
setInterval(refresh, 10000);
