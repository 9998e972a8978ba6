#!/usr/bin/env bash
# Installs everything tidecast needs on a fresh Debian machine, idempotently:
# a Python venv with the package and its dev tools, the browser-side packages
# from the npm registry, and (with --test) Chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [[ "${1:-}" == "--test" ]]; then
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  # nginx itself (nginx-light is only a transitional name for it on Debian 12): built with
  # http_secure_link, which the edge needs to check playback tokens
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
  # GStreamer publishes over RTMPS in the ingest tests (rtmp2sink is in -bad; TLS via glib-networking)
  command -v gst-launch-1.0 >/dev/null 2>&1 || need_apt+=(gstreamer1.0-tools)
  [[ -n "$(find /usr/lib -name libgstrtmp2.so -print -quit 2>/dev/null)" ]] || need_apt+=(gstreamer1.0-plugins-bad)
  [[ -n "$(find /usr/lib -name libgstflv.so -print -quit 2>/dev/null)" ]] || need_apt+=(gstreamer1.0-plugins-good)
  [[ -n "$(find /usr/lib -name libgiognutls.so -print -quit 2>/dev/null)" ]] || need_apt+=(glib-networking)
fi
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  # no service gets started by the install (containers have no init system to own it)
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if ((made_policy)); then rm -f $policy; fi
fi

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

if [[ ! -f web/node_modules/hls.js/dist/hls.min.js ]]; then
  echo "setup: installing browser packages from the npm registry"
  (cd web && npm install --no-audit --no-fund --silent)
fi
