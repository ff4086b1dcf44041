"""The documents tell the truth: every figure names the command that made it, the marked numbers are what
their records say (a number changed by hand fails), the README's curl answers are the service's, and every
code example runs as written."""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest

from scripts.docs_numbers import BLOCK, PAGES, render, stale_blocks
from scripts.figures import CODE, RECORDS, unrecorded
from scripts.figures import PAGES as FIGURE_PAGES
from tests.conftest import ROOT

DOCS = ["README.md", "BENCHMARKS.md", "models/README.md", "models/ONNX.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
# a percentage, milliseconds, a number in e-notation, or one with two decimals or more (not a version or address)
MEASURED = re.compile(r"\d%|\d ms\b|\de-\d|(?<![\w.:])\d+\.\d{2,}(?![\w.-])")
MARKER = re.compile(r"<!-- (command|numbers): ")


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(line index of the header, the table's lines) for each Markdown table outside code blocks (a numbers block
    shows what its command printed, tables included, in a code block under its own marker)."""
    lines, found, i, fenced = text.splitlines(), [], 0, False
    while i < len(lines) - 1:
        fenced ^= lines[i].startswith("```")
        if not fenced and lines[i].startswith("|") and lines[i + 1].startswith("|---"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            found.append((i, lines[i:end]))
            i = end
        else:
            i += 1
    return found


def unmarked_figures(text: str) -> list[str]:
    """Tables holding measured figures without a marker naming their command just above them (a table rendered
    from a record, inside its numbers block, names it)."""
    text = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    lines = text.splitlines()
    return [rows[0][:80] for start, rows in tables(text)
            if MEASURED.search("\n".join(rows[2:])) and not any(MARKER.search(l) for l in lines[max(0, start - 2):start])]


def test_every_table_of_measured_figures_names_its_command():
    found = {doc: unmarked_figures((ROOT / doc).read_text()) for doc in DOCS}
    assert {doc: rows for doc, rows in found.items() if rows} == {}


def test_the_marker_check_catches_a_table_without_a_command():
    table = "| run | images/s |\n|---|---|\n| 1 | 412.57 |\n"
    assert unmarked_figures("Some text.\n\n" + table) == ["| run | images/s |"]
    assert unmarked_figures("<!-- command: python -m loadtest.pinned; 2-core CI VM; 2026-12-02 -->\n" + table) == []
    assert unmarked_figures("| route | body |\n|---|---|\n| /classify | 256 images |\n") == []  # no measurement


def test_every_marked_block_is_what_its_record_renders():
    """docs/numbers/NAME.json holds what `make docs-numbers` measured; the pages show exactly that."""
    assert stale_blocks() == []
    names = {m.group("name") for page in PAGES for m in BLOCK.finditer((ROOT / page).read_text())}
    assert names == {p.stem for p in (ROOT / "docs" / "numbers").glob("*.json")}


def test_a_number_changed_by_hand_is_caught(tmp_path):
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    page = (tmp_path / "docs" / "loadtest.md").read_text()
    body = render("loadtest")
    edited = re.sub(r"(\d+)\.(\d)", lambda m: f"{int(m.group(1)) + 1}.{m.group(2)}", body, count=1)
    assert edited != body
    (tmp_path / "docs" / "loadtest.md").write_text(page.replace(body, edited))
    assert stale_blocks(tmp_path) == ["docs/loadtest.md: loadtest"]


def test_every_measured_figure_is_one_a_record_holds():
    """No speed, time, size, accuracy or ratio in README, docs/ or the model cards is typed by hand: a record a
    command wrote holds each (scripts/figures.py says which records and how a figure is matched)."""
    assert [f"{f.page}:{f.line}: {f.text}" for f in unrecorded()] == []


def test_a_figure_typed_by_hand_is_caught(tmp_path):
    """The same check on a copy of the repository's pages and records, with one figure typed into a page."""
    for pattern in (*FIGURE_PAGES, *RECORDS, *CODE):
        for path in ROOT.glob(pattern):
            (tmp_path / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / path.relative_to(ROOT))
    before = set(unrecorded(tmp_path))
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text() + "\nIt answers in 3.217 ms at 98.4321% accuracy.\n")
    assert [f.text for f in unrecorded(tmp_path) if f not in before] == ["3.217 ms", "98.4321%"]


INLINE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(?:\.\./)*[\w.-]+(?:/[\w.*-]+)+/?$")
NOT_OURS = ("artifacts/", "runs/", "data/", ".venv", "http", "localhost/", "application/", "image/", "text/",
            "multipart/", "/dev/", "nvidia.com/", "serving/static/ort", "static/ort", "deployment/", "service/")
# (generated, a URL, a MIME type, a device, a resource name, onnxruntime-web's copy by `make web`, kubectl's names)
UNIT_OR_RATIO = re.compile(r"^(?:[\d.]+/[\d.]+|(?:images|req|requests)/s)$")  # 0.9916/0.9939, images/s
ROUTE = re.compile(r"^(?:(GET|POST|PUT|DELETE) )?(/(?:ui|v2|classify|classify_image|reconstruct|explain|metadata|livez|"
                   r"readyz|metrics|docs\.json|schema\.json)\b[^\s]*)$")


def named(text: str) -> tuple[set[str], set[str], set[str], set[tuple[str, str]]]:
    """What a page names: repository paths and make targets (in code), settings (anywhere), routes of ours."""
    spans = INLINE.findall(text) + re.findall(r"```\w*\n(.*?)```", text, re.S)
    words = {w.strip("'\",;:()") for span in spans for w in span.split()}
    paths = {w for w in words if REPO_PATH.match(w) and not w.startswith(NOT_OURS) and not UNIT_OR_RATIO.match(w)}
    targets = {t for span in spans for t in re.findall(r"(?<![\w-])make ([a-z][\w-]*)", span)}
    settings = set(re.findall(r"\bCAPSNET_[A-Z_]*[A-Z]\b", text))
    routes = {(m.group(1) or "GET", m.group(2)) for span in INLINE.findall(text) if (m := ROUTE.match(span))}
    return paths, targets, settings, routes


def read(doc: str) -> str:
    return (ROOT / doc).read_text()


def missing_names(docs: list[str], read: Callable[[str], str] = read) -> list[str]:
    """The paths, make targets and settings the pages name that the repository does not hold."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    sources = "".join((ROOT / f).read_text(errors="replace") for f in files if f != "tests/test_docs.py"  # its own example
                      and (f.endswith((".py", ".sh", ".yaml", "Makefile", ".cfg")) or f.startswith(".ci/")))
    found = []
    for doc in docs:
        paths, make_targets, settings, _ = named(read(doc))
        for path in paths:
            here = str((ROOT / doc).parent.joinpath(path).resolve().relative_to(ROOT.resolve())) \
                if path.startswith("..") else path.rstrip("/")
            pattern = re.compile(re.escape(here).replace(r"\*", "[^/]*") + r"(/|$)")
            if not any(pattern.search(f) and (f.startswith(here.split("*")[0]) or f.endswith(here)) for f in files):
                found.append(f"{doc}: path {path}")
        found += [f"{doc}: make {t}" for t in make_targets - targets]
        found += [f"{doc}: setting {s}" for s in settings if s not in sources]
    return sorted(found)


def test_every_path_target_and_setting_a_page_names_exists():
    assert missing_names(DOCS) == []


def test_a_page_naming_what_does_not_exist_is_caught():
    def with_three_names(doc: str) -> str:
        return read(doc) + "\nThe `serving/direct.py` module, `make models` and `CAPSNET_TURBO`.\n"

    assert missing_names(["docs/serving.md"], with_three_names) == [
        "docs/serving.md: make models", "docs/serving.md: path serving/direct.py", "docs/serving.md: setting CAPSNET_TURBO"]


# answered only by a real process (BentoML's metrics app: tests/test_e2e.py), or made by `make web` (the page's ONNX
# Runtime files: tests/test_ui.py)
NOT_IN_PROCESS = ("/metrics", "/ui/ort")


def test_every_route_a_page_names_is_answered(client):
    """Each route of ours a page names, asked with its method (GET when none is named): anything but a 404."""
    asked = set()
    for doc in DOCS:
        for method, route in named(read(doc))[3]:
            for path in {route.replace("[/versions/V]", ""), route.replace("[/versions/V]", "/versions/fp32")}:
                path = path.split("...")[0].split("*")[0]
                path = path if path == "/ui/" else path.rstrip("/")  # /v2/...: the protocol's root, /v2
                if not path.startswith(NOT_IN_PROCESS):
                    asked.add((doc, method, path))
    refused = [f"{doc}: {method} {path}" for doc, method, path in sorted(asked)
               if client.request(method, path, **({"json": {}} if method == "POST" else {})).status_code == 404]
    assert len(asked) > 20 and refused == []


def test_no_page_measures_here_or_today():
    """A number says which machine and which command; no page says "here", "today" or "this machine"."""
    found = [f"{doc}:{n}" for doc in DOCS for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1)
             if re.search(r"\bhere\b|\btoday\b|this (\d-core |shared )*machine", line, re.I)]
    assert found == []


def test_no_record_holds_a_path_of_the_machine_that_made_it():
    records = [*ROOT.glob("models/*.json"), *ROOT.glob("docs/**/*.json")]
    assert [str(p.relative_to(ROOT)) for p in records if re.search(r'"/(tmp|home|root|work)/', p.read_text())] == []


def test_the_readme_is_short_and_reaches_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 180
    reached, todo = set(), ["README.md"]
    while todo:
        page = todo.pop()
        for link in re.findall(r"\]\(([^)#\s]+\.md)", (ROOT / page).read_text()):
            target = str((ROOT / page).parent.joinpath(link).resolve().relative_to(ROOT))
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} <= reached


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_the_readme_curl_lines_answer_what_the_readme_says(service_url):
    """The README's two curl lines, run as written against `make serve`'s service, answer what the page shows."""
    assert "<!-- numbers: examples -->" in (ROOT / "README.md").read_text()  # the page shows this record
    shown = json.loads((ROOT / "docs" / "numbers" / "examples.json").read_text())["text"].splitlines()
    assert len(shown) == 4
    port = service_url.rsplit(":", 1)[1]
    for command, answer in zip(shown[0::2], shown[1::2]):
        run = subprocess.run(command[2:].replace("127.0.0.1:3000", f"127.0.0.1:{port}"), shell=True, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        got, want = json.loads(run.stdout), json.loads(answer)
        assert got.keys() == want.keys()
        assert got.get("labels", got.get("label")) == want.get("labels", want.get("label"))
        # int8's kernels differ between CPUs (with or without VNNI): the README's answers and an AMD EPYC's
        # differ by up to 6.2e-3 in a length, so the page is held to 0.01 (fp32 against int8: 9.4e-3)
        assert np.allclose(got["lengths"], want["lengths"], rtol=0, atol=0.01), (got, want)


def test_the_example_inputs_are_what_scripts_examples_writes(mnist_root, tmp_path):
    made = subprocess.run([sys.executable, "scripts/examples.py", "--data", str(mnist_root), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for name in ("digit.json", "digit.png", "digits.f32"):
        assert (tmp_path / name).read_bytes() == (ROOT / "docs" / "examples" / name).read_bytes(), name


def test_the_onnx_cards_python_example_prints_what_it_says():
    [code] = code_blocks((ROOT / "models" / "ONNX.md").read_text(), "python")
    expected = re.search(r"print\(.*\)\s*# (.*)", code).group(1)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == expected


@pytest.fixture(scope="module")
def node_modules():
    if shutil.which("npm") is None:
        pytest.skip("needs Node.js and npm")
    folder = ROOT / "clients" / "js"
    if not (folder / "node_modules" / "onnxruntime-node").exists():
        run = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    return folder


@pytest.mark.slow
def test_the_onnx_cards_node_examples_print_what_they_say(node_modules, tmp_path):
    """The JavaScript program, saved in clients/js (where `npm ci` put onnxruntime-node) and run from the
    repository's root as the card says, and the card's `node clients/js/classify.mjs` line."""
    card = (ROOT / "models" / "ONNX.md").read_text()
    [program] = code_blocks(card, "js")
    expected = re.search(r"// prints (.*)", program).group(1)
    script = node_modules / "card-example.mjs"
    script.write_text(program)
    try:
        run = subprocess.run(["node", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        script.unlink()
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == expected
    line = re.search(r"^\$ (node clients/js/classify\.mjs .*?)\s+#.*\n(.*)$", card, re.M)
    run = subprocess.run(line.group(1), shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    shown = re.match(r'\{"labels":(\[.*?\]),"lengths":\[\[([\d.e-]+),', line.group(2))
    answer = json.loads(run.stdout)
    assert answer["labels"] == json.loads(shown.group(1))
    assert abs(answer["lengths"][0][0] - float(shown.group(2))) < 1e-6


@pytest.mark.slow
def test_the_client_sessions_run_against_the_service(service):
    """docs/serving.md's sessions with the standard library, BentoML's client and tritonclient (HTTP and gRPC), run
    by doctest against a real service."""
    text = (ROOT / "docs" / "serving.md").read_text()
    sessions = re.findall(r"```\n(>>> .*?)```", text, re.S)
    assert len(sessions) == 4
    for session in sessions:
        session = (session.replace("http://127.0.0.1:3000", service.url)
                   .replace("127.0.0.1:3000", service.url.removeprefix("http://"))
                   .replace("127.0.0.1:8001", service.grpc))
        test = doctest.DocTestParser().get_doctest(session, {}, "serving.md", "docs/serving.md", 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            runner.run(test)
        finally:
            os.chdir(cwd)
        assert runner.failures == 0 and runner.tries == len(test.examples)
