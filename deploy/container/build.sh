#!/usr/bin/env bash
# Build the Bento of a model and its container image: deploy/container/build.sh cpu|gpu
#
# cpu: bentofile.yaml     (onnxruntime, int8 by default)          -> image capsnet:cpu
# gpu: bentofile.gpu.yaml (onnxruntime-gpu[cuda,cudnn], fp16 on CUDA) -> image capsnet:gpu
# The model is CAPSNET_MODEL (the fp32 ONNX file or its folder; default the published one): the image holds it
# and serves it (deploy/container/bento.sh). With Docker where an engine answers, else buildah; the base image
# comes from base-image.sh (Debian's packages, no Docker Hub). Environment: CAPSNET_MODEL, BENTOML (default
# .venv/bin/bentoml), IMAGE (the tag).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/container/builder.sh

KIND=${1:?usage: build.sh cpu|gpu}
case $KIND in
    cpu) BENTOFILE=bentofile.yaml ;;
    gpu) BENTOFILE=bentofile.gpu.yaml ;;
    *) echo "container: FAILED: unknown image '$KIND' (cpu or gpu)" >&2; exit 1 ;;
esac
IMAGE=${IMAGE:-capsnet:$KIND}
BENTOML=$(realpath "${BENTOML:-.venv/bin/bentoml}")
BASE_IMAGE=$(sed -n 's/^ *base_image: *"\(.*\)"/\1/p' "$BENTOFILE")
export BENTOML_DO_NOT_TRACK=True BASE_IMAGE
fail() { echo "container: FAILED at $1" >&2; exit 1; }
start=$(date +%s)

detect_builder
echo "container: [1/3] base image $BASE_IMAGE ($CONTAINER_BUILDER)" >&2
deploy/container/base-image.sh "$CONTAINER_BUILDER" || fail "step 1/3: the base image (see above)"

echo "container: [2/3] the Bento of ${CAPSNET_MODEL:-models/capsnet-mnist.onnx} ($BENTOFILE)" >&2
tag=$(deploy/container/bento.sh "$KIND" | tail -1) || fail "step 2/3: the Bento (see above)"

echo "container: [3/3] bentoml containerize $tag -> $IMAGE ($CONTAINER_BUILDER)" >&2
# Run from the temporary folder's parent: BentoML 1.4.40 refuses a dockerfile_template that is not under
# the current folder, and it reads the template from a temporary copy (bentoml/BentoML#5566).
(cd "${TMPDIR:-/tmp}" && "$BENTOML" containerize "$tag" --backend "$CONTAINER_BUILDER" -t "$IMAGE") \
    || fail "step 3/3: bentoml containerize (the build log is above)"

size() {  # bytes, uncompressed
    case $CONTAINER_BUILDER in
        docker) docker image inspect -f '{{.Size}}' "$1" ;;
        buildah) buildah images --format '{{.Size}}' "$1" | head -1 | python3 -c '
import sys; n, unit = sys.stdin.read().split(); print(round(float(n) * 1000 ** "B kB MB GB TB".split().index(unit)))' ;;
    esac
}
image=$(size "$IMAGE"); base=$(size "$BASE_IMAGE")
echo "container: built $IMAGE in $(( $(date +%s) - start )) s: $(( image / 1000000 )) MB, of which $(( (image - base) / 1000000 )) MB on top of $BASE_IMAGE ($(( base / 1000000 )) MB)" >&2
