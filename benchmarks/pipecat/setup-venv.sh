#!/usr/bin/env bash
# Make the Pipecat 1.14 virtualenv the comparison benchmark runs its bot in (only when missing).
#   bash benchmarks/pipecat/setup-venv.sh [VENV]      default: .data/bench/pipecat-venv
# PyPI only. Fails if anything CUDA- or torch-shaped came along, so the venv stays small.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$ROOT/.data/bench/pipecat-venv}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.pipecat-bench-installed"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP"; then
    exit 0
fi
echo "setting up the Pipecat virtualenv in $VENV (a few minutes, once)"
mkdir -p "$(dirname "$VENV")"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$REQ"
if "$VENV/bin/python" -m pip list --format=freeze | grep -i -E '^(torch|torchaudio|nvidia-|triton)'; then
    echo "the Pipecat venv pulled in torch/CUDA packages (listed above): refusing" >&2
    exit 1
fi
"$VENV/bin/python" -c "import pipecat, faster_whisper, piper, fastapi, uvicorn; from pipecat.serializers.twilio import TwilioFrameSerializer"
"$VENV/bin/python" -m pip list --format=freeze > "$VENV/pip-freeze.txt"
cp "$REQ" "$STAMP"
echo "Pipecat venv ready: $(du -sh "$VENV" | cut -f1)"
