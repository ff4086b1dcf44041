#!/usr/bin/env bash
# Build the Bento of a model and print its tag: deploy/container/bento.sh cpu|gpu
#
# The model is CAPSNET_MODEL (the fp32 ONNX file or the folder `python -m export` wrote it in; default the
# published models/capsnet-mnist.onnx): deploy/container/bento.py stages serving/ and the model's files in a
# temporary folder with the bentofile (bentofile.yaml or bentofile.gpu.yaml), and `bentoml build` builds it there.
# Environment: CAPSNET_MODEL, BENTOML (default .venv/bin/bentoml), BENTOML_HOME (BentoML's store).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIND=${1:?usage: bento.sh cpu|gpu}
BENTOML=$(realpath "${BENTOML:-.venv/bin/bentoml}")
PY=$(dirname "$BENTOML")/python
MODEL=$(realpath -m "${CAPSNET_MODEL:-models/capsnet-mnist.onnx}")
export BENTOML_DO_NOT_TRACK=True
staged=$(mktemp -d)
trap 'rm -rf "$staged"' EXIT
"$PY" deploy/container/bento.py "$KIND" "$MODEL" "$staged/bento"
tag=$(cd "$staged/bento" && "$BENTOML" build -f bentofile.yaml --output tag 2>/dev/null | tail -1) \
    || { echo "bento: FAILED: bentoml build" >&2; exit 1; }
tag=${tag#__tag__:}
[ -n "$tag" ] || { echo "bento: FAILED: bentoml build printed no tag" >&2; exit 1; }
echo "bento: built $tag from ${CAPSNET_MODEL:-models/capsnet-mnist.onnx}" >&2
echo "$tag"
