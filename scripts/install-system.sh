#!/usr/bin/env bash
# Installs the Debian packages Moksori needs, only when they are missing.
#   espeak-ng              Korean TTS (run as a subprocess)
#   libportaudio2          microphone/speakers for `moksori chat`
#   chromium               headless browser tests
#   pocketsphinx-testdata  extra real English speech for tests
#   qemu-user              tests only: runs the models on an emulated AVX2-only CPU (x86_64 hosts)
#   nginx                  the load balancer of `make cluster` (started as the current user, never as a service)
#   coturn                 tests only: a real TURN server for the WebRTC relay tests (each test starts its own on
#                          127.0.0.1; the package's system service, an open relay on every interface, is disabled)
set -euo pipefail
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need+=(libportaudio2)
[ -d /usr/share/pocketsphinx/test/data/librivox ] || need+=(pocketsphinx-testdata)
if [ "$(uname -m)" = x86_64 ]; then command -v qemu-x86_64 >/dev/null 2>&1 || need+=(qemu-user); fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v turnserver >/dev/null 2>&1 || [ -x /usr/bin/turnserver ] || need+=(coturn)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "moksori: installing system packages: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "moksori: need root (or sudo) to install: ${need[*]}" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
if [[ " ${need[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now coturn >/dev/null 2>&1 || true
fi
