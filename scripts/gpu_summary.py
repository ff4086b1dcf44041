"""The GPU run's results as Markdown, for BENCHMARKS.md: python scripts/gpu_summary.py OUT > OUT/summary.md

Reads what scripts/gpu-run.sh wrote into OUT (steps.jsonl, serving.json, sweep/, bench/, scaling-w*/) and
prints each part it finds; a step that was skipped or failed is said so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(out: Path) -> str:
    lines = [f"# GPU run ({out})", "", "```", (out / "machine.txt").read_text().strip()
             if (out / "machine.txt").exists() else "no machine.txt", "```", "", "| step | result |", "|---|---|"]
    for line in (out / "steps.jsonl").read_text().splitlines():
        step = json.loads(line)
        result = f"skipped: {step['skipped']}" if "skipped" in step else f"exit {step['rc']} in {step['seconds']} s"
        lines.append(f"| {step['step']} | {result} |")
    if serving := load(out / "serving.json"):
        lines += ["", f"Serving: {serving['device']}, variant {serving['metadata']['variant']}, providers "
                      f"{serving['metadata']['providers']}; {serving['labels_agree_with_cpu']} of {serving['digits']} labels as"
                      f" in-process CPU ONNX Runtime (lengths within {serving['max_abs_diff_lengths_vs_cpu']:.1e});"
                      f" {serving['sequential_images_per_s']} images/s from one sequential client."]
    if sweep := load(out / "sweep" / "summary.json"):
        lines += ["", f"Sweep ({sweep['device']}, {sweep['variant']}, {sweep['images_per_request']} digits per request,"
                      f" in-process best {sweep['in_process_best_images_per_s']:.0f} images/s):", "",
                  "| users | images/s | p50 ms | p99 ms | failures | of in-process |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['users']} | {s['images_per_s']:.0f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['failures']}"
                  f" | {s['fraction_of_in_process']:.0%} |" for s in sweep["steps"]]
    if bench := load(out / "bench" / "bench.json"):
        rates = bench["images_per_s"]
        batches = list(next(iter(rates.values())))
        lines += ["", f"Throughput ({bench['machine']['device']}, images/s):", "",
                  "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---" * (len(batches) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{row[b]:.0f}" for b in batches) + " |" for name, row in rates.items()]
        lines += ["", f"Target ratios: {bench['target_ratios']}"]
    scaling = {int(p.name.removeprefix("scaling-w")): load(p / "summary.json") for p in sorted(out.glob("scaling-w*")) if p.is_dir()}
    if any(scaling.values()):
        lines += ["", "CPU scaling (the CPU service, int8):", "", "| workers | images/s | p99 ms |", "|---|---|---|"]
        lines += [f"| {w} | {s['steps'][-1]['images_per_s']:.0f} | {s['steps'][-1]['p99_ms']:.0f} |"
                  for w, s in sorted(scaling.items()) if s]
    for name, key in (("affnist", "accuracy"), ("multimnist", "accuracy_both_named")):
        found = sorted((out / "experiments").glob(f"{name}*.json"))
        if found and (report := load(found[0])):
            lines += ["", f"Experiment {found[0].stem} (schedule {report['schedule']['name']}): "
                      + json.dumps(report[key])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
