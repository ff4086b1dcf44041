#!/usr/bin/env bash
# Check the GPU image (make container-gpu) on this machine: deploy/container/check-gpu-image.sh
#
# 1. inside the image, onnxruntime.preload_dlls() loads cuDNN and cuBLAS from the pip packages and ONNX
#    Runtime offers CUDAExecutionProvider;
# 2. with CAPSNET_DEVICE=cpu it serves a real digit (docs/examples/digit.json, a 7) on the CPU;
# 3. where no GPU is visible, CAPSNET_DEVICE=cuda stops at start-up with the reason and exit code 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/container/builder.sh
IMAGE=${IMAGE:-capsnet:gpu}
PORT=${PORT:-3077}
detect_builder
fail() { echo "check-gpu-image: FAILED: $*" >&2; exit 1; }

inside() {  # python code run by the image's own interpreter
    if [ "$CONTAINER_BUILDER" = docker ]; then
        docker run --rm --entrypoint /app/.venv/bin/python "$IMAGE" -c "$1"
    else
        local ctr rc=0
        ctr=$(buildah from -q "$IMAGE")
        buildah run --isolation chroot "$ctr" -- /app/.venv/bin/python -c "$1" || rc=$?
        buildah rm "$ctr" >/dev/null
        return $rc
    fi
}

echo "check-gpu-image: [1/3] CUDA libraries in $IMAGE" >&2
inside '
import onnxruntime as ort
ort.preload_dlls()
loaded = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps") if ".so" in line
                 and "/nvidia/" in line})
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
print("loaded by preload_dlls:", " ".join(loaded))
assert "CUDAExecutionProvider" in providers, providers
for lib in ("libcudnn.so", "libcublas.so", "libcublasLt.so"):
    assert any(name.startswith(lib) for name in loaded), f"{lib} not loaded"
' || fail "step 1: the CUDA libraries"

echo "check-gpu-image: [2/3] CAPSNET_DEVICE=cpu serves a real digit" >&2
CAPSNET_DEVICE=cpu PORT=$PORT IMAGE=$IMAGE deploy/container/run.sh gpu > /tmp/check-gpu-image.log 2>&1 &
runner=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
answer=$(curl -s -X POST "http://127.0.0.1:$PORT/classify" -H 'Content-Type: application/json' \
         -d @docs/examples/digit.json)
device=$(curl -s -X POST "http://127.0.0.1:$PORT/metadata" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["device"], m["variant"], m["providers"][0])')
kill -TERM "$runner"; wait "$runner" || true
echo "classify: ${answer:0:40}...  metadata: $device" >&2
python3 -c 'import json, sys; assert json.loads(sys.argv[1])["labels"] == [7]' "$answer" 2>/dev/null \
    || fail "step 2: expected the label 7, got: ${answer:0:200}"

echo "check-gpu-image: [3/3] CAPSNET_DEVICE=cuda without a GPU stops at start-up" >&2
if [ -e /dev/nvidiactl ]; then
    echo "check-gpu-image: a GPU is visible here: step 3 is for machines without one; skipped" >&2
else
    rc=0
    out=$(CAPSNET_DEVICE=cuda PORT=$PORT IMAGE=$IMAGE timeout 180 deploy/container/run.sh gpu 2>&1) || rc=$?
    echo "$out" | grep "capsnet: cannot start" >&2 || fail "step 3: no start-up message (exit $rc): ${out: -1000}"
    [ "$rc" = 1 ] || fail "step 3: exit code $rc, expected 1"
fi
echo "check-gpu-image: all checks passed" >&2
