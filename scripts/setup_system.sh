#!/usr/bin/env bash
# Install the system packages the Spaces need, when missing: poppler-utils (PDF pages),
# ffmpeg (audio decoding), git-lfs (deploying weights), espeak-ng and sox (synthetic speech for
# twi-speech's training and tests). Installs with apt-get when run as root;
# otherwise prints the exact command to run.
set -euo pipefail

declare -A needs=([pdftoppm]=poppler-utils [ffmpeg]=ffmpeg [git-lfs]=git-lfs [espeak-ng]=espeak-ng
               [sox]=sox)
missing=()
for binary in "${!needs[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${needs[$binary]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "Missing system packages: ${missing[*]}" >&2
echo "Install them with:  sudo apt-get install -y ${missing[*]}" >&2
exit 1
