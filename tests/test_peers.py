"""`python -m loadtest.peers --quick`: the service's Open Inference Protocol beside PyTriton (the real tritonserver
with its dynamic batcher) and KServe's model server, over HTTP and gRPC, each checked for the right labels and then
loaded by wrk (HTTP) and h2load (gRPC) on pinned cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest.peers.__main__ import BODIES, GRPC_BODIES, GRPC_FORM, PEERS, PEERS_PYTHON, main
from tests.conftest import REQUIRE_TOOLS


@pytest.mark.skipif((shutil.which("wrk") is None or shutil.which("h2load") is None or not PEERS_PYTHON.exists()
                     or not Path(PEERS["kserve"].python(str(PEERS_PYTHON))).exists()) and not REQUIRE_TOOLS,
                    reason="needs wrk, h2load, .venv-peers and .venv-kserve (make test installs them)")
def test_quick_peers_measure_the_service_beside_pytriton_and_kserve(tmp_path, served_onnx):
    assert main(["--quick", "--model", str(served_onnx), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "peers.json").read_text())
    assert report["left_out"] == []
    measured = {(r["server"], r["format"], r["body"]) for r in report["rows"] if r["requests"] > 0 and r["non_2xx"] == 0}
    v2 = {"1 digit, JSON": "v2, JSON tensors", "1 digit, binary": "v2, binary tensors", "8 digits, binary": "v2, binary tensors"}
    classify = {"1 digit, JSON": "/classify, JSON", "1 digit, binary": "/classify, raw float32",
                "8 digits, binary": "/classify, raw float32"}
    grpc = {body: GRPC_FORM for body in GRPC_BODIES}
    assert measured == {(server, forms[body], body) for server, forms in
                        (("service", classify), ("service", v2), ("pytriton", v2), ("kserve", v2)) for body in BODIES} | {
        (server, GRPC_FORM, body) for server in ("service", "pytriton", "kserve") for body in grpc}
    for row in report["rows"]:  # the service's own side of its /classify and gRPC rows, from its /metrics
        if row["server"] == "service" and not row["format"].startswith("v2"):
            assert row["server_split"]["requests"] >= row["requests"] > 0
        elif row["server"] != "service":
            assert row["server_split"] is None
    markdown = (tmp_path / "peers.md").read_text()
    assert "| pytriton | v2, binary tensors |" in markdown and "| service | v2, JSON tensors |" in markdown
    assert "**8 digits, gRPC** (h2load)" in markdown and f"| kserve | {GRPC_FORM} |" in markdown
