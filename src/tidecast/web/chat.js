// tidecast chat panel. Live (/watch/<stream>): a WebSocket to /chat/<stream> that
// reconnects by itself and rejoins under the same name. VOD (/videos/<id>): the
// broadcast's chat replayed in step with the video, following seeks.
// Everything from users is rendered with textContent: never as HTML.
"use strict";
(function () {
  const parts = location.pathname.split("/").filter(Boolean);
  const vod = parts[0] === "videos";
  const id = decodeURIComponent(parts[parts.length - 1]);
  const list = document.getElementById("chat-list");
  const more = document.getElementById("chat-more");
  const stateEl = document.getElementById("chat-state");
  const viewersEl = document.getElementById("chat-viewers");
  const joinForm = document.getElementById("chat-join");
  const sendForm = document.getElementById("chat-send");
  const modBox = document.getElementById("chat-mod");
  const token = new URLSearchParams(location.search).get("chat_token");
  if (token) {
    // read once, then out of the address bar, the history and any Referer
    const clean = new URL(location.href);
    clean.searchParams.delete("chat_token");
    history.replaceState(history.state, "", clean.pathname + clean.search + clean.hash);
  }
  const chat = { state: "idle", received: [], errors: [], me: null };
  window.tidecastChat = chat;

  // -- rendering (text only) -------------------------------------------------------
  let stick = true; // follow new messages unless the reader scrolled up
  list.addEventListener("scroll", () => {
    stick = list.scrollHeight - list.scrollTop - list.clientHeight < 30;
    if (stick) more.hidden = true;
  });
  more.addEventListener("click", () => {
    list.scrollTop = list.scrollHeight;
    more.hidden = true;
  });
  function scroll() {
    if (stick) list.scrollTop = list.scrollHeight;
    else more.hidden = false;
  }
  function line(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = text;
    list.appendChild(li);
    scroll();
  }
  function messageItem(m) {
    const li = document.createElement("li");
    li.className = "msg role-" + (m.role || "viewer");
    li.dataset.id = m.id;
    const u = document.createElement("span");
    u.className = "user";
    u.textContent = m.user;
    const t = document.createElement("span");
    t.className = "text";
    t.textContent = m.text;
    li.append(u, t);
    if (chat.me && (chat.me.role === "moderator" || chat.me.role === "streamer") && !vod) {
      for (const [label, ev] of [["del", { type: "delete", id: m.id }],
        ["5m", { type: "timeout", user: m.user, seconds: 300 }], ["ban", { type: "ban", user: m.user }]]) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "mod";
        b.textContent = label;
        b.addEventListener("click", () => send(ev));
        li.appendChild(b);
      }
    }
    return li;
  }
  function addMessage(m) {
    list.appendChild(messageItem(m));
    while (list.children.length > 500) list.removeChild(list.firstChild);
    scroll();
  }

  if (vod) {
    replay();
    return;
  }

  // -- live chat ------------------------------------------------------------------
  let ws = null;
  let name = localStorage.getItem("tidecast.chatName") || "";
  let retry = 0;
  document.getElementById("chat-name").value = name;
  function setState(s) {
    chat.state = s;
    stateEl.textContent = s === "joined" ? "" : s;
  }
  function send(ev) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(ev));
  }
  function connect() {
    setState("connecting");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/chat/" + encodeURIComponent(id) +
      (token ? "?token=" + encodeURIComponent(token) : ""));
    ws.onopen = () => {
      retry = 0;
      if (token) send({ type: "join" });
      else if (name) send({ type: "join", name });
      else setState("pick a name");
    };
    ws.onmessage = (e) => {
      const ev = JSON.parse(e.data);
      chat.received.push(ev);
      if (chat.received.length > 2000) chat.received.shift();
      switch (ev.type) {
        case "welcome":
          chat.me = ev.you;
          setState("joined");
          joinForm.hidden = true;
          sendForm.hidden = false;
          modBox.hidden = !(ev.you.role === "moderator" || ev.you.role === "streamer");
          list.replaceChildren();
          ev.history.forEach(addMessage);
          viewersEl.textContent = ev.viewers + " in chat";
          break;
        case "message": addMessage(ev); break;
        case "delete": {
          const li = list.querySelector('li[data-id="' + CSS.escape(ev.id) + '"]');
          if (li) li.remove();
          break;
        }
        case "presence": viewersEl.textContent = ev.viewers + " in chat"; break;
        case "slow": line("notice", ev.seconds ? "slow mode: one message every " + ev.seconds + " s" : "slow mode off"); break;
        case "timeout": line("notice", ev.user + " was timed out for " + ev.seconds + " s"); break;
        case "ban": line("notice", ev.user + " was banned"); break;
        case "notice": line("notice", ev.text); break;
        case "error":
          chat.errors.push(ev);
          line("error", ev.message);
          if (ev.code === "name_taken" || ev.code === "bad_name") {
            joinForm.hidden = false;
            sendForm.hidden = true;
          }
          break;
      }
    };
    ws.onclose = () => {
      sendForm.hidden = true;
      if (chat.errors.some((e) => e.code === "banned")) {
        setState("banned");
        return;
      }
      setState("reconnecting");
      retry = Math.min(retry + 1, 6);
      setTimeout(connect, 500 * 2 ** retry); // reconnect, rejoin, get the recent history again
    };
  }
  joinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    name = document.getElementById("chat-name").value.trim();
    localStorage.setItem("tidecast.chatName", name);
    send({ type: "join", name });
  });
  sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("chat-text");
    if (!input.value.trim()) return;
    send({ type: "message", text: input.value });
    input.value = "";
  });
  document.getElementById("chat-slow").addEventListener("change", (e) => {
    send({ type: "slow", seconds: parseInt(e.target.value, 10) });
  });
  connect();

  // -- VOD replay -----------------------------------------------------------------
  async function replay() {
    joinForm.hidden = true;
    stateEl.textContent = "replay";
    let r = await fetch("/api/v1/broadcasts/" + encodeURIComponent(id));
    let broadcast = id;
    if (!r.ok) {
      r = await fetch("/api/v1/clips/" + encodeURIComponent(id));
      if (!r.ok) return;
      broadcast = (await r.json()).broadcast;
    }
    const messages = await (await fetch("/api/v1/broadcasts/" + encodeURIComponent(broadcast) + "/chat")).json();
    chat.replay = messages;
    let shown = -1;
    setInterval(() => {
      const hls = window.tidecastPlayer && window.tidecastPlayer.hls;
      const when = hls && hls.playingDate ? hls.playingDate.getTime() / 1000 : null;
      if (when === null) return;
      let n = 0;
      while (n < messages.length && messages[n].ts <= when) n++;
      if (n === shown) return;
      if (n < shown) list.replaceChildren(); // a seek backwards: start over
      for (let i = Math.max(0, n < shown ? 0 : shown); i < n; i++) addMessage(messages[i]);
      shown = n;
      chat.shownIds = messages.slice(0, n).map((m) => m.id);
      chat.playingAt = when;
    }, 200);
  }
})();
