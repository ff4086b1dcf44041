"""The build folder of a Bento that serves one model: deploy/container/bento.py cpu|gpu MODEL FOLDER

MODEL is what every stage takes (CAPSNET_MODEL): the fp32 ONNX file, or the folder `python -m export` wrote it in.
FOLDER receives serving/, the Dockerfile template, the model's files under model/ (the fp32 file, the variants and
the decoder its metadata names, its verification record and card, and a models/ card where there is one) and a
bentofile.yaml: bentofile.yaml (cpu) or bentofile.gpu.yaml (gpu) with those files included and CAPSNET_MODEL set to
the fp32 file. `deploy/container/bento.sh` builds the Bento from it (`make build`, and `make container`'s step 2).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from serving.sessions import read_metadata  # noqa: E402
from serving.settings import SettingsError, model_path  # noqa: E402

BENTOFILES = {"cpu": "bentofile.yaml", "gpu": "bentofile.gpu.yaml"}
CARDS = ("README.md", "ONNX.md")  # the hand-written cards of a folder (models/ has both)


def model_files(fp32: Path) -> list[Path]:
    """The fp32 file and every file that goes with it: the variants and decoder its metadata names, its
    verification record and generated card, and the folder's own cards."""
    meta = read_metadata(fp32)
    named = [*json.loads(meta.get("variants", "{}")).values(), *([meta["decoder"]] if "decoder" in meta else [])]
    beside = [fp32.with_suffix(".verify.json"), fp32.with_suffix(".card.md"), *(fp32.parent / c for c in CARDS)]
    return [fp32, *(fp32.with_name(name) for name in named), *(p for p in beside if p.exists())]


def stage(kind: str, model: str, folder: Path) -> Path:
    """Write the build folder; returns the fp32 file it holds."""
    fp32 = model_path(model)
    if not fp32.exists():
        raise SystemExit(f"bento: FAILED: no model at {fp32} (CAPSNET_MODEL: the fp32 .onnx file or its folder)")
    shutil.copytree(ROOT / "serving", folder / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "deploy" / "container").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "container" / "Dockerfile.j2", folder / "deploy" / "container")
    (folder / "model").mkdir()
    for path in model_files(fp32):
        shutil.copy(path, folder / "model" / path.name)
    bentofile = yaml.safe_load((ROOT / BENTOFILES[kind]).read_text())
    bentofile["include"] = [*(p for p in bentofile["include"] if p.startswith("serving/")), "model/*"]
    # the image's gRPC listens on all its interfaces, as its HTTP does (run.sh narrows it where it shares the host's)
    bentofile["envs"] = [{"name": "CAPSNET_MODEL", "value": f"model/{fp32.name}"},
                         {"name": "CAPSNET_GRPC_HOST", "value": "0.0.0.0"}]
    (folder / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
    return fp32


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in BENTOFILES:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    try:
        fp32 = stage(argv[0], argv[1], Path(argv[2]))
    except SettingsError as err:
        print(f"bento: FAILED: {err}", file=sys.stderr)
        return 1
    print(f"bento: {fp32} and its files staged in {argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
