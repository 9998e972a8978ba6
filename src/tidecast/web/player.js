// tidecast watch page: hls.js with low-latency-friendly live settings, a quality
// menu (Auto + every rendition), a stats overlay, and an offline state that
// turns into playback by itself when the stream goes live.
"use strict";
(function () {
  const parts = location.pathname.split("/").filter(Boolean);
  const vodMode = parts[0] === "videos"; // /videos/<broadcast or clip id>: a recording
  const name = decodeURIComponent(parts[parts.length - 1]);
  let src = "/hls/" + encodeURIComponent(name) + "/master.m3u8";
  const video = document.getElementById("video");
  const offline = document.getElementById("offline");
  const quality = document.getElementById("quality");
  const statsBox = document.getElementById("stats");
  const statusEl = document.getElementById("status");
  document.getElementById("title").textContent = name;
  document.title = name + " — tidecast";

  const player = { state: "offline", hls: null, errors: [], levelSwitches: [], stalls: [], bufferStalls: 0,
                   lowLatency: false };
  window.tidecastPlayer = player;

  function setState(s) {
    player.state = s;
    document.body.dataset.state = s;
    offline.hidden = s === "playing" || s === "loading" || (vodMode && s === "ended");
    statusEl.textContent = s === "playing" ? "live" : s;
  }

  function levelLabel(l) {
    const kbps = Math.round((l.bitrate || 0) / 1000);
    return (l.height ? l.height + "p" : "audio") + " · " + kbps + " kb/s";
  }

  function fillQualityMenu(hls) {
    quality.replaceChildren();
    const auto = document.createElement("option");
    auto.value = "-1";
    auto.textContent = "Auto";
    quality.appendChild(auto);
    hls.levels.forEach((l, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = levelLabel(l);
      quality.appendChild(o);
    });
    quality.value = hls.autoLevelEnabled ? "-1" : String(hls.currentLevel);
  }

  function showAutoChoice(hls) {
    const auto = quality.querySelector('option[value="-1"]');
    if (!auto) return;
    const l = hls.levels[hls.currentLevel];
    auto.textContent = hls.autoLevelEnabled && l ? "Auto (" + levelLabel(l) + ")" : "Auto";
  }

  quality.addEventListener("change", () => {
    if (!player.hls) return;
    const v = parseInt(quality.value, 10);
    player.hls.currentLevel = v; // -1 = automatic
    showAutoChoice(player.hls);
  });

  document.getElementById("stats-toggle").addEventListener("click", () => {
    statsBox.hidden = !statsBox.hidden;
  });
  // DVR: viewers may seek back through the live window; "Go live" returns to the edge
  const goLive = document.getElementById("go-live");
  goLive.addEventListener("click", () => {
    const hls = player.hls;
    player.dvr = false;
    if (hls && hls.liveSyncPosition) video.currentTime = hls.liveSyncPosition;
  });
  // A viewer who did not seek back is kept near the live edge. hls.js's catch-up
  // (maxLiveSyncPlaybackRate) only acts within one target duration of its target
  // latency, and farther behind it takes the player for a DVR viewer: a player pushed
  // back by a busy machine or a long stall would stay there for good. So, unless the
  // viewer sought back (player.dvr, until "Go live"), 4 s or two target durations past
  // the target latency for 5 s in a row means a jump to the live position.
  let lastTime = 0;
  let behindSince = null;
  player.dvr = false;
  player.liveJumps = 0;
  video.addEventListener("timeupdate", () => { if (!video.seeking) lastTime = video.currentTime; });
  video.addEventListener("seeking", () => { if (video.currentTime < lastTime - 1) player.dvr = true; });
  setInterval(() => {
    const hls = player.hls;
    const behind = hls && hls.liveSyncPosition ? hls.liveSyncPosition - video.currentTime : 0;
    goLive.hidden = vodMode || !hls || behind < 4;
    const d = hls && hls.latestLevelDetails;
    if (vodMode || !hls || !d || !d.live || player.dvr || player.state !== "playing" || !hls.targetLatency) {
      behindSince = null;
      return;
    }
    if (hls.latency > hls.targetLatency + Math.max(4, 2 * d.targetduration)) {
      if (behindSince === null) behindSince = performance.now();
      if (performance.now() - behindSince >= 5000 && hls.liveSyncPosition) {
        behindSince = null;
        player.liveJumps++;
        video.currentTime = hls.liveSyncPosition;
      }
    } else {
      behindSince = null;
    }
  }, 500);

  function stats() {
    const hls = player.hls;
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    let buffered = 0;
    for (let i = 0; i < video.buffered.length; i++) {
      if (video.buffered.start(i) <= video.currentTime && video.currentTime <= video.buffered.end(i)) {
        buffered = video.buffered.end(i) - video.currentTime;
      }
    }
    const level = hls && hls.levels[hls.currentLevel];
    return {
      state: player.state,
      level: level ? levelLabel(level) : "-",
      auto: hls ? hls.autoLevelEnabled : false,
      bandwidthKbps: hls ? Math.round(hls.bandwidthEstimate / 1000) : 0,
      bufferS: +buffered.toFixed(2),
      latencyS: hls && hls.latency ? +hls.latency.toFixed(2) : null,
      targetLatencyS: hls && hls.targetLatency ? +hls.targetLatency.toFixed(2) : null,
      lowLatency: player.lowLatency,
      playbackRate: video.playbackRate,
      stalls: player.stalls.length + (stalledAt === null ? 0 : 1),
      stallsMs: player.stalls.reduce((t, x) => t + x.ms, 0),
      bufferStalls: player.bufferStalls,
      liveJumps: player.liveJumps,
      droppedFrames: q ? q.droppedVideoFrames : 0,
      decodedFrames: q ? q.totalVideoFrames : 0,
      currentTime: +video.currentTime.toFixed(2),
      stalledMs: stalledAt === null ? 0 : Math.round(performance.now() - stalledAt),
    };
  }
  player.stats = stats;

  setInterval(() => {
    if (statsBox.hidden) return;
    const s = stats();
    statsBox.textContent =
      "rendition  " + s.level + (s.auto ? " (auto)" : "") + "\n" +
      "bandwidth  " + s.bandwidthKbps + " kb/s\n" +
      "buffer     " + s.bufferS + " s\n" +
      "latency    " + (s.latencyS === null ? "-" : s.latencyS + " s") +
        (s.targetLatencyS === null ? "" : " (target " + s.targetLatencyS + " s" +
         (s.lowLatency ? ", LL" : "") + (s.playbackRate !== 1 ? ", at " + s.playbackRate + "x" : "") + ")") + "\n" +
      "stalls     " + s.stalls + " (" + s.stallsMs + " ms)\n" +
      "frames     " + s.droppedFrames + " dropped / " + s.decodedFrames + " decoded";
  }, 500);

  function destroy() {
    if (player.hls) {
      player.hls.destroy();
      player.hls = null;
    }
  }

  function start() {
    destroy();
    setState("loading");
    if (!window.Hls || !Hls.isSupported()) {
      if (video.canPlayType("application/vnd.apple.mpegurl")) {
        video.src = src; // Safari's native HLS
        video.play().catch(() => {});
        setState("playing");
        return;
      }
      setState("unsupported");
      return;
    }
    const hls = new Hls({
      // LL-HLS playlists (parts, blocking reload): the player keeps the playlist's
      // PART-HOLD-BACK (3 parts) behind the live edge. Standard playlists: 3 segments
      // behind it (hls.js's liveSyncDurationCount default; set here, it would override
      // PART-HOLD-BACK too), enough buffer to switch down on a sudden bandwidth drop
      // without a visible stall (about 6 s with 2 s segments). After a stall hls.js
      // moves the target back by liveSyncOnStallIncrease (up to one target duration).
      lowLatencyMode: true,
      // DVR: a viewer who seeks back stays there (hls.js's default
      // liveMaxLatencyDurationCount, Infinity: no forced jump to the live edge;
      // setting it here needs liveSyncDurationCount too); "Go live" returns, and a
      // slightly late player catches up at up to 1.1x
      abrEwmaFastLive: 2.0,
      abrBandWidthFactor: 0.9,
      maxLiveSyncPlaybackRate: 1.1,
      backBufferLength: 30,
      capLevelToPlayerSize: true,
      capLevelOnFPSDrop: true,
      startLevel: -1,
      abrEwmaDefaultEstimate: 1500000,
      manifestLoadingMaxRetry: 2,
      levelLoadingMaxRetry: 4,
    });
    player.hls = hls;
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      fillQualityMenu(hls);
      video.play().catch((e) => player.errors.push("play: " + e));
    });
    // A stream that has just gone live lists only a segment or two: starting now
    // would pin playback to the live edge with almost no buffer, and the first
    // bandwidth drop would stall. Wait until the playlist holds enough segments
    // for the configured distance from the live edge.
    hls.once(Hls.Events.LEVEL_LOADED, (_e, data) => {
      const d = data.details;
      player.lowLatency = !!(d.partList && d.partList.length);
      // LL: the hold back is a second of parts; one complete segment before it is plenty
      const need = player.lowLatency ? 1 : hls.config.liveSyncDurationCount + 1;
      if (d.live && !vodMode && d.fragments.length < need) {
        const waitMs = (need - d.fragments.length) * d.targetduration * 1000;
        player.deferredStartMs = waitMs;
        destroy();
        setState("loading");
        setTimeout(() => { if (!player.hls) start(); }, waitMs);
      }
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_e, data) => {
      player.levelSwitches.push({ level: data.level, at: Date.now() });
      showAutoChoice(hls);
    });
    hls.on(Hls.Events.ERROR, (_e, data) => {
      player.errors.push(data.type + ":" + data.details + (data.fatal ? " (fatal)" : ""));
      if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) player.bufferStalls++;
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      // manifest not there yet, or the stream went away: wait for it to be live
      destroy();
      setState("offline");
      setTimeout(vodMode ? openRecording : poll, 2000);
    });
    hls.loadSource(src);
    hls.attachMedia(video);
  }

  // stalls while playing: how long the picture froze waiting for data (a seek's own
  // wait for data is the seek's, not a stall)
  let stalledAt = null;
  video.addEventListener("waiting", () => {
    if (player.state === "playing" && stalledAt === null && !video.seeking) stalledAt = performance.now();
  });
  video.addEventListener("playing", () => {
    if (stalledAt !== null) {
      player.stalls.push({ at: Date.now(), ms: Math.round(performance.now() - stalledAt) });
      stalledAt = null;
    }
    setState("playing");
  });
  video.addEventListener("ended", () => {
    if (vodMode) {
      setState("ended");
      return;
    }
    destroy();
    setState("offline");
    setTimeout(poll, 2000);
  });

  async function poll() {
    if (player.hls) return;
    try {
      const r = await fetch("/api/v1/streams/" + encodeURIComponent(name));
      if (r.ok) {
        const s = await r.json();
        if (s.live) {
          start();
          return;
        }
      }
    } catch (e) {
      player.errors.push("poll: " + e);
    }
    setTimeout(poll, 2000);
  }

  // a stream that goes offline while we watch: hls.js sees EXT-X-ENDLIST and
  // the video ends; also watch the API so a stall without ENDLIST is noticed
  setInterval(async () => {
    if (vodMode || !player.hls || player.state !== "playing") return;
    try {
      const r = await fetch("/api/v1/streams/" + encodeURIComponent(name));
      if (r.ok && !(await r.json()).live && video.paused) {
        destroy();
        setState("offline");
        setTimeout(poll, 2000);
      }
    } catch (e) {
      player.errors.push("status: " + e);
    }
  }, 5000);

  // Playback access: a stream that is not public needs a token, which the browser keeps
  // as a cookie. It comes from a ?token= link (taken out of the address bar at once) or in
  // exchange for the stream's password; then hls.js and chat work as for a public stream.
  async function ensureAccess(stream) {
    let info;
    try {
      const r = await fetch("/api/v1/streams/" + encodeURIComponent(stream) + "/playback");
      if (!r.ok) return;
      info = await r.json();
    } catch (e) {
      player.errors.push("access: " + e);
      return;
    }
    player.access = info.access;
    if (info.access === "public" || info.token_valid) return;
    const url = new URL(location.href);
    const linked = url.searchParams.get("token");
    if (linked) {
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
      if (await exchange(stream, { token: linked })) return;
    }
    if (info.access !== "password") {
      setState("needs a playback token");
      offline.firstChild.textContent = "This stream needs a playback link";
      await new Promise(() => {}); // nothing more to do without one
    }
    await askPassword(stream);
  }

  async function exchange(stream, body) {
    const r = await fetch("/api/v1/streams/" + encodeURIComponent(stream) + "/playback-session", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    if (r.ok) return true;
    let detail = r.status === 429 ? "too many attempts; wait a minute" : "refused";
    try { detail = (await r.json()).detail || detail; } catch (e) { /* no JSON body */ }
    player.accessError = detail;
    return false;
  }

  function askPassword(stream) {
    setState("password");
    const form = document.createElement("form");
    form.id = "password-form";
    form.className = "overlay";
    form.innerHTML = '<div>This stream is password-protected</div>' +
      '<input id="password" type="password" autocomplete="current-password" required placeholder="password">' +
      '<button type="submit">Watch</button><div class="muted" id="password-error"></div>';
    document.querySelector(".player").appendChild(form);
    return new Promise((resolve) => {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const ok = await exchange(stream, { password: form.querySelector("#password").value });
        if (ok) {
          form.remove();
          resolve();
        } else {
          form.querySelector("#password-error").textContent = player.accessError;
        }
      });
    });
  }

  async function openRecording() {
    // a broadcast (live or VOD) or a clip
    let r = await fetch("/api/v1/broadcasts/" + encodeURIComponent(name));
    let info = r.ok ? await r.json() : null;
    if (!info) {
      r = await fetch("/api/v1/clips/" + encodeURIComponent(name));
      info = r.ok ? await r.json() : null;
    }
    if (!info) {
      setState("not found");
      return;
    }
    document.getElementById("title").textContent = info.title || info.stream;
    document.title = (info.title || info.stream) + " — tidecast";
    if (player.access === undefined) await ensureAccess(info.stream);
    if (info.hls_url) {
      src = info.hls_url;
      start();
    } else if (info.live) {
      src = "/hls/" + encodeURIComponent(info.stream) + "/master.m3u8"; // still live: DVR
      start();
    } else {
      setState("processing");
      setTimeout(openRecording, 3000);
    }
  }

  player.vod = vodMode;
  if (vodMode) {
    setState("loading");
    openRecording();
  } else {
    setState("offline");
    ensureAccess(name).then(poll);
  }
})();
