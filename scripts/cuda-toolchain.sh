#!/usr/bin/env bash
# cuda-toolchain.sh: makes sure a Python venv holds the CUDA 13 toolchain
# that builds polyview's CUDA backend (nvcc, runtime, CCCL, cuBLAS, cuDNN,
# NCCL, NVTX), all from NVIDIA's wheels on PyPI, with no system install.
#
#   scripts/cuda-toolchain.sh [VENV]   (default ${POLYVIEW_CUDA_VENV:-$HOME/.cache/polyview/cuda13})
#
# Progress goes to stderr; the last line on stdout is the venv's python,
# for cmake -DPython3_EXECUTABLE=... . Pip runs only when the pins below
# differ from those recorded in the venv, so a warm run needs no network.
set -euo pipefail

venv="${1:-${POLYVIEW_CUDA_VENV:-$HOME/.cache/polyview/cuda13}}"

# nvidia-cuda-nvcc names nvidia-nvvm and nvidia-cuda-crt without a
# version; left floating they pull a newer cicc whose PTX the pinned
# ptxas rejects ("Unsupported .version 9.5"), so they are pinned too.
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14
  nvidia-cudnn-cu13==9.14.0.64
  nvidia-nccl-cu13==2.28.7
  nvidia-nvtx==13.0.85
)
stamp="$venv/.polyview-pins"
python="$venv/bin/python"

if [[ ! -x "$python" ]]; then
  echo "cuda-toolchain: creating venv $venv" >&2
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >&2; then
    # Debian without python3-venv has no ensurepip: a bare venv, filled
    # by the system pip (pip >= 22.3 can target another interpreter).
    rm -rf "$venv"
    python3 -m venv --without-pip "$venv" >&2
    pip_cmd=(python3 -m pip --python "$python")
  fi
fi

want="$(printf '%s\n' "${pins[@]}")"
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
  echo "cuda-toolchain: installing ${#pins[@]} pinned wheels into $venv" >&2
  if [[ -z "${pip_cmd+x}" ]] && ! "$python" -m pip --version >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip --python "$python")
  fi
  [[ -n "${pip_cmd+x}" ]] || pip_cmd=("$python" -m pip)
  PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip_cmd[@]}" install --no-input --quiet "${pins[@]}" >&2
  printf '%s\n' "$want" > "$stamp"
else
  echo "cuda-toolchain: $venv has the pinned wheels" >&2
fi

nvcc="$("$python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "bin", "nvcc"))')"
if ! "$nvcc" --version >/dev/null 2>&1; then
  echo "cuda-toolchain: $nvcc does not run; remove $venv and retry" >&2
  exit 1
fi
echo "cuda-toolchain: $("$nvcc" --version | tail -1)" >&2
echo "$python"
