#!/usr/bin/env bash
# On a lent GPU host (torch 2.11, no network): unpack vLLM 0.26 from the parts copied into
# /tmp/gpuparts, make emolab's entry points visible without pip, lay out the Qwen3-8B shape, unpack py-spy.
# Source it: `. scripts/gpu/prepare.sh` (it exports PYTHONPATH).
set -e
REPO=$(pwd)
PARTS=${PARTS:-/tmp/gpuparts}
if [ ! -d /tmp/site/vllm ]; then
    mkdir -p /tmp/site
    cat "$PARTS"/vllm-site.tar.xz.part0 "$PARTS"/vllm-site.tar.xz.part1 "$PARTS"/vllm-site.tar.xz.part2 \
        "$PARTS"/vllm-site.tar.xz.part3 | xz -d -T8 | tar -x -C /tmp/site
    xz -d < "$PARTS"/vllm-site-extras.tar.xz | tar -x -C /tmp/site
fi
# The `vllm.general_plugins` entry point is found through distribution metadata on sys.path.
DIST=/tmp/site/emolab-0.1.0.dist-info
mkdir -p "$DIST"
printf 'Metadata-Version: 2.1\nName: emolab\nVersion: 0.1.0\n' > "$DIST/METADATA"
printf '[vllm.general_plugins]\nemolab_steering = emolab.fastpath.plugin:register\n\n[console_scripts]\nemolab = emolab.cli:main\n' \
    > "$DIST/entry_points.txt"
export PYTHONPATH=/tmp/site:$REPO
mkdir -p /tmp/qwen3-8b && cp "$REPO"/emolab/assets/qwen3_8b/* /tmp/qwen3-8b/
# py-spy, where its wheel was carried in .gpu/tools: $PYSPY (profiles in frontend.sh and gap.sh)
PYSPY=/tmp/pyspy/py_spy-0.4.3.data/scripts/py-spy
if ls "$REPO"/.gpu/tools/py_spy-*.whl >/dev/null 2>&1 && [ ! -x $PYSPY ]; then
    mkdir -p /tmp/pyspy && (cd /tmp/pyspy && python3 -m zipfile -e "$(ls "$REPO"/.gpu/tools/py_spy-*.whl)" .) \
        && chmod +x $PYSPY
fi
python3 -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__, torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
