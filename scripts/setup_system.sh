#!/usr/bin/env bash
# Install the system packages the Spaces need, when missing: poppler-utils (PDF pages),
# ffmpeg (audio decoding), git-lfs (deploying weights), espeak-ng and sox (synthetic speech for
# twi-speech's training and tests), and the Debian font packages answer-sheet-ml's sheet
# generator draws with (training and tests). Installs with apt-get when run as root;
# otherwise prints the exact command to run.
set -euo pipefail

declare -A needs=([pdftoppm]=poppler-utils [ffmpeg]=ffmpeg [git-lfs]=git-lfs [espeak-ng]=espeak-ng
               [sox]=sox)
# A file each font package installs -> the package (spaces/answer-sheet-ml/training/sheets.py).
declare -A fonts=(
  [/usr/share/fonts/truetype/fifthhorseman/dkg.ttf]=fonts-dkg-handwriting
  [/usr/share/fonts/truetype/breip/Breip.ttf]=fonts-breip
  [/usr/share/fonts/opentype/bwht/BecauseWeBuild-Regular.otf]=fonts-bwht
  [/usr/share/fonts/truetype/femkeklaver/femkeklaver.ttf]=fonts-femkeklaver
  [/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf]=fonts-humor-sans
  [/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf]=fonts-comic-neue
  [/usr/share/fonts/truetype/kristi/Kristi.ttf]=fonts-kristi
  [/usr/share/fonts/opentype/dancingscript/DancingScript-Regular.otf]=fonts-dancingscript
  [/usr/share/fonts/opentype/kaushanscript/KaushanScript-Regular.otf]=fonts-kaushanscript
  [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]=fonts-dejavu-core
  [/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf]=fonts-dejavu-core
  [/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf]=fonts-liberation
  [/usr/share/fonts/truetype/freefont/FreeSans.ttf]=fonts-freefont-ttf
  [/usr/share/fonts/fonts-go/Go-Regular.ttf]=fonts-go
  [/usr/share/fonts/opentype/cantarell/Cantarell-Regular.otf]=fonts-cantarell
  [/usr/share/fonts/truetype/lato/Lato-Regular.ttf]=fonts-lato
  [/usr/share/fonts/truetype/crosextra/Carlito-Regular.ttf]=fonts-crosextra-carlito
  [/usr/share/fonts/opentype/linux-libertine/LinLibertine_R.otf]=fonts-linuxlibertine
  [/usr/share/fonts/truetype/inconsolata/Inconsolata.otf]=fonts-inconsolata
)
missing=()
for binary in "${!needs[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${needs[$binary]}")
done
for file in "${!fonts[@]}"; do
  [ -f "$file" ] || missing+=("${fonts[$file]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
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
