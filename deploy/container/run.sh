#!/usr/bin/env bash
# Run an image that build.sh made, with the same settings as `make serve`: deploy/container/run.sh [cpu|gpu]
#
# Environment: HOST (127.0.0.1), PORT (3000), GRPC_PORT (8001: the Open Inference Protocol over gRPC), IMAGE (default capsnet:cpu or capsnet:gpu), and every CAPSNET_*
# setting of the service (serving/settings.py) but CAPSNET_MODEL and the gRPC address (GRPC_PORT), passed into the container as set (the image
# serves the model files it holds). With `docker run` where an engine answers (the GPU image gets
# --gpus all), else `buildah run --isolation chroot`, which shares this machine's network, so the service
# listens on HOST:PORT itself. Ctrl-C (or SIGTERM) stops the service gracefully and removes the container.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/container/builder.sh

KIND=${1:-cpu}
IMAGE=${IMAGE:-capsnet:$KIND}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-3000}
GRPC_PORT=${GRPC_PORT:-8001}
BENTO_PATH=/home/bentoml/bento
envs=()
for name in $(compgen -e | grep '^CAPSNET_' | grep -vxE 'CAPSNET_MODEL|CAPSNET_GRPC_(PORT|HOST)'); do  # the image's own, or set below
    envs+=(--env "$name=${!name}")
done

detect_builder
if [ "$CONTAINER_BUILDER" = docker ]; then
    flags=(--rm --init -p "$HOST:$PORT:3000" -p "$HOST:$GRPC_PORT:8001")
    if [ "$KIND" = gpu ]; then flags+=(--gpus all); fi
    if [ -t 0 ]; then flags+=(-it); fi
    exec docker run "${flags[@]}" "${envs[@]}" "$IMAGE"
fi

ctr=$(buildah from -q "$IMAGE") || { echo "container: FAILED: no image $IMAGE (make container)" >&2; exit 1; }
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
echo "container: $IMAGE as $ctr (buildah, chroot isolation) on http://$HOST:$PORT" >&2
# In its own session, so that a Ctrl-C in the terminal reaches this script only (see stop).
setsid buildah run --isolation chroot --env "PORT=$PORT" --env "CAPSNET_GRPC_PORT=$GRPC_PORT" \
    --env "CAPSNET_GRPC_HOST=$HOST" "${envs[@]}" "$ctr" -- "$BENTO_PATH/env/docker/entrypoint.sh" \
    --host "$HOST" &
runner=$!

descendants() {  # every process below $1, parents first
    local child
    for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}
stop() {
    # buildah run answers a signal by killing its child at once, which orphans BentoML's worker:
    # ask `bentoml serve` itself to shut down instead, then make sure nothing of it is left.
    local pid procs
    procs=$(descendants "$runner")
    for pid in $procs; do
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "bentoml serve"; then kill -TERM "$pid"; fi
    done
    for _ in $(seq 40); do kill -0 "$runner" 2>/dev/null || break; sleep 0.5; done
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
    # and buildah run itself, should it still wait on a child that is gone
    for _ in $(seq 10); do kill -0 "$runner" 2>/dev/null || return 0; sleep 0.5; done
    kill -KILL "$runner" 2>/dev/null || true
}
trap 'stop' INT TERM
set +e
wait "$runner"
rc=$?
while kill -0 "$runner" 2>/dev/null; do wait "$runner"; rc=$?; done
exit "$rc"
