#!/usr/bin/env bash
# One GPU check, prepared while no GPU was available (issue #17): the CUDA subset of the test suite
# (pytest -m gpu), the block bench, the parallel-clients bench, the peer bench and the surface bench,
# each under its own time limit (about 7.5 minutes in all), and a markdown table of what each printed.
#
#   bench/gpu_check.sh [OUT.md]        (default: gpu_check.md; run from the repository root)
#   bench/gpu_check.sh --dry-run       (print the steps and their limits; no GPU needed)
#
# Exits 2 with one line when no CUDA device is visible. PY selects the interpreter (default .venv/bin/python).
# The peer and surface benches have no --device flag: they run their own (CPU) path even here, and the
# table says so.
set -u
PY=${PY:-.venv/bin/python}
DRY=0
OUT=gpu_check.md
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) OUT=$a ;;
  esac
done

# name | limit in seconds | command
STEPS=(
  "tests (pytest -m gpu)|90|$PY -m pytest -m gpu -q -p no:cacheprovider"
  "block bench (trace 99 HVPs, SLQ 10x80)|150|$PY bench/curvature_blocks.py --device cuda --images 1000"
  "parallel clients (10 clients)|60|$PY bench/parallel_clients.py --device cuda --repeats 3"
  "peer bench, top-1 (CPU path)|90|$PY bench/hessian_vs_peers.py --parts 1 --quick"
  "surface bench (CPU path)|60|$PY bench/surface_vs_loss_landscapes.py --grid 11"
)

if [ "$DRY" = 1 ]; then
  total=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    echo "$name: timeout ${limit}s: $cmd"
    total=$((total + limit))
  done
  echo "total limit: ${total}s"
  exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
LOGS=$(mktemp -d)
{
  echo "## GPU check: $GPU, $(date -u +%Y-%m-%d) (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  echo "| step | exit | seconds | result (last lines) |"
  echo "|---|---|---|---|"
} >"$OUT"
i=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  i=$((i + 1))
  log="$LOGS/step$i.log"
  start=$(date +%s)
  timeout "$limit" bash -c "$cmd" >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  [ "$rc" = 124 ] && note="timed out after ${limit}s; " || note=""
  last=$(grep -v '^\s*$' "$log" | tail -n 4 | tr '\n' ' ' | sed 's/|/\\|/g' | cut -c1-600)
  echo "| $name | $rc | $secs | ${note}${last} |" >>"$OUT"
  echo "$name: exit $rc in ${secs}s (log $log)"
done
{
  echo
  echo "Full logs: $LOGS. Tables printed by the benches:"
  for f in "$LOGS"/step*.log; do
    echo
    grep '^|' "$f" || true
  done
} >>"$OUT"
echo "wrote $OUT"
