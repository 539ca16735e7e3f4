#!/usr/bin/env bash
# Renders TensorBoard's HParams table for a run folder to a PNG with headless Chromium:
#   scripts/hparams_screenshot.sh runs/<sweep-run> docs/img/hparams.png
# Needs Debian's chromium (apt-get install chromium) and TensorBoard in .venv (make tensorboard).
set -euo pipefail
run=${1:?usage: $0 RUN_DIR OUT.png}
out=${2:?usage: $0 RUN_DIR OUT.png}
port=${PORT:-6199}
tb=${TENSORBOARD:-.venv/bin/tensorboard}
"$tb" --logdir "$run" --port "$port" > /dev/null 2>&1 &
tb_pid=$!
trap 'kill $tb_pid 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf "http://localhost:$port/data/plugins_listing" > /dev/null && break
  sleep 1
done
# The virtual-time budget lets the page fetch and lay out the sessions before the capture.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=2500,720 \
  --virtual-time-budget=15000 --screenshot="$(realpath -m "$out")" \
  "http://localhost:$port/?darkMode=false#hparams" 2> /dev/null
echo "$out"
