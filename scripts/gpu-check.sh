#!/usr/bin/env bash
# gpu-check.sh: the project's one GPU check, for any machine with an NVIDIA
# GPU. It builds the CUDA backend with CMake, runs every GPU test against
# the CPU reference, runs compute-sanitizer (memcheck, racecheck) over the
# GPU loss and view tests where the tool exists, runs the GPU benchmarks
# with their PyTorch peers, trains briefly on the CIFAR-10 shards, and
# writes one report: OUT/report.md and OUT/report.json.
#
#   scripts/gpu-check.sh --prepare     # on a machine with Go: build the Go
#                                      # test and tool binaries into bin/
#   scripts/gpu-check.sh [OUT]         # on the GPU machine (default OUT=gpu-report)
#
# The GPU machine needs a driver, CMake, nvcc (CUDA 12 or 13) and cuDNN 9
# (system-wide, or inside a Python's site-packages: CMake looks there when
# -DPython3_EXECUTABLE or python3 has the nvidia wheels). Go is optional
# there: without it the binaries from --prepare are used.
# Environment: PYTHON (python with torch for the peers, default python3),
# TRAIN_STEPS (default 300), POLYVIEW_DATA (default ../shared/data/cifar10).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  mkdir -p bin
  go test -c -o bin/bindings.test ./bindings
  go test -c -o bin/model.test ./trainer/model
  go build -o bin/bench ./cmd/bench
  go build -o bin/train ./cmd/train
  echo "built bin/: bindings.test model.test bench train"
  exit 0
fi

out="${1:-gpu-report}"
mkdir -p "$out"
python="${PYTHON:-python3}"
data="${POLYVIEW_DATA:-../shared/data/cifar10}"
steps="${TRAIN_STEPS:-300}"
results=()  # "name|status|seconds|detail"

# step NAME CMD...: runs CMD with its output in OUT/NAME.log, records the
# status and the time, never stops the script.
step() {
  local name="$1"
  shift
  local t0=$SECONDS
  echo "== $name"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local status=pass
  [[ $rc -eq 0 ]] || status="fail (exit $rc)"
  local skips
  skips=$(grep -c -- '--- SKIP' "$out/$name.log" || true)
  [[ "$skips" -eq 0 ]] || status="$status, $skips skipped"
  results+=("$name|$status|$((SECONDS - t0))|$name.log")
  echo "   $status, $((SECONDS - t0)) s"
  return 0
}

tool() {  # the Go binary NAME, built now if Go is here, else from bin/
  local name="$1"
  if command -v go >/dev/null; then
    mkdir -p bin
    case "$name" in
      bindings.test) go test -c -o bin/bindings.test ./bindings ;;
      model.test) go test -c -o bin/model.test ./trainer/model ;;
      *) go build -o "bin/$name" "./cmd/$name" ;;
    esac
  fi
  [[ -x "bin/$name" ]] || { echo "missing bin/$name: run scripts/gpu-check.sh --prepare" >&2; return 1; }
  echo "$PWD/bin/$name"
}

step gpu nvidia-smi
step configure cmake -B build -S . -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$(command -v "$python")"
step build cmake --build build -j
step ctest ctest --test-dir build --output-on-failure
export POLYVIEW_CUDA_LIB="$PWD/build/libpolyview_cuda.so"

bt="$(tool bindings.test)" && step gpu-tests bash -c "cd bindings && '$bt' -test.run 'CUDA' -test.v"
mt="$(tool model.test)" && step model-tests bash -c "cd trainer/model && '$mt' -test.v"
if command -v compute-sanitizer >/dev/null && [[ -n "${bt:-}" ]]; then
  for t in memcheck racecheck; do
    step "sanitizer-$t" bash -c "cd bindings && compute-sanitizer --tool $t --error-exitcode 9 \
      '$bt' -test.run 'CUDALoss|AugmentCUDA'"
  done
fi

bench="$(tool bench)"
if [[ -n "$bench" ]]; then
  step bench-loss "$bench" loss -device cuda -python "$python" -json "$out/loss.json"
  step bench-loss-cpu "$bench" loss -device cpu -r 4096 -python "$python" -json "$out/loss_cpu.json"
  step bench-views "$bench" views -device cuda -python "$python" -json "$out/views.json"
  step bench-encoder-gpu "$bench" encoder-gpu -python "$python" -json "$out/encoder_gpu.json"
fi
train="$(tool train)"
if [[ -n "$train" ]]; then
  step train "$train" -device cuda -data "$data" -views simclr-cifar -view-size 32 \
    -model resnet18 -n 256 -m 4 -steps "$steps" -warmup 30 -knn-every 0 \
    -progress=false -out "$out/train"
fi
if [[ -n "$train" ]]; then
  step train-bf16 "$train" -device cuda -precision bf16 -data "$data" -views simclr-cifar \
    -view-size 32 -model resnet18 -n 256 -m 4 -steps 100 -warmup 30 -knn-every 0 \
    -progress=false -out "$out/train-bf16"
fi
# Data-parallel: NCCL between GPU ranks needs two GPUs or more.
ngpu="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
if [[ -n "$train" && "$ngpu" -ge 2 ]]; then
  step train-dp "$train" -nproc-per-node "$ngpu" -device cuda -data "$data" \
    -views simclr-cifar -view-size 32 -model resnet18 -n $((256 * ngpu)) -m 4 -steps 50 \
    -warmup 10 -knn-every 0 -progress=false -out "$out/train-dp"
fi
if [[ -n "$bench" && -n "$train" ]]; then
  worlds=1; for w in 2 4 8; do [[ "$ngpu" -ge "$w" ]] && worlds="$worlds,$w"; done
  step bench-dist "$bench" dist -measure "" -scaling "$worlds" -device cuda -train "$train" \
    -json "$out/dist.json"
fi

# The report: one table of steps, then each benchmark's printed table.
{
  echo "# polyview GPU check"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nvidia-smi -L 2>/dev/null | head -1)"
  echo
  echo "| step | status | seconds | log |"
  echo "| --- | --- | ---: | --- |"
  for r in "${results[@]}"; do
    IFS='|' read -r n s t l <<<"$r"
    echo "| $n | $s | $t | $l |"
  done
  for n in bench-loss bench-loss-cpu bench-views bench-encoder-gpu bench-dist; do
    [[ -f "$out/$n.log" ]] || continue
    echo
    echo "## $n"
    echo
    echo '```'
    cat "$out/$n.log"
    echo '```'
  done
  if [[ -f "$out/train.log" ]]; then
    echo
    echo "## training"
    echo
    echo '```'
    grep -E 'kNN|done|device' "$out/train.log"
    echo '```'
  fi
} >"$out/report.md"

{
  echo "{\"steps\": ["
  sep=""
  for r in "${results[@]}"; do
    IFS='|' read -r n s t l <<<"$r"
    printf '%s{"name": "%s", "status": "%s", "seconds": %s, "log": "%s"}' "$sep" "$n" "$s" "$t" "$l"
    sep=$',\n'
  done
  echo "]}"
} >"$out/report.json"

echo "report: $out/report.md, $out/report.json"
fails=$(printf '%s\n' "${results[@]}" | grep -c '|fail' || true)
[[ "$fails" -eq 0 ]]
