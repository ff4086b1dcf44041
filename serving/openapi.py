"""The documents BentoML writes about the service, made true of it: /docs.json (OpenAPI 3) and /schema.json
(what BentoML's clients read to know the routes). serving/app.py's table rewrites both as they leave.

BentoML only knows its `@bentoml.api` methods (/reconstruct, /explain, /metadata). `fix` adds the routes the
project answers itself (/classify, /classify_image, the Open Inference Protocol's), and makes the document valid
and exact: BentoML 1.4's own types `"type": "tensor"` (the images) are not OpenAPI types; the images' shape,
range and count are not said; none of our error answers is documented. `fix_schema` adds /classify and
/classify_image to /schema.json as BentoML states an API that takes `images` (a tensor) or `image` (a file),
so that `bentoml.SyncHTTPClient(url).classify(images=...)` and `.classify_image(image=Path(...))` work.
"""

from __future__ import annotations

import json
from typing import Any

from serving.limits import IMAGE_SIZE, MAX_BATCH, MAX_EXPLAIN
from serving.settings import VARIANTS

MNIST_GRID = 6  # the primary-capsule grid at 28x28
PIXEL = {"type": "number", "minimum": 0, "maximum": 1}
UPLOAD = {"type": "string", "format": "binary",
          "description": "PNG, JPEG, BMP, GIF or WebP, at most 10 MiB and 16,777,216 pixels"}
LABEL = {"type": "integer", "minimum": 0, "maximum": 9}
LENGTHS = {"type": "array", "minItems": 10, "maxItems": 10, "items": {"type": "number", "minimum": 0}}
SHARE = {"type": "number", "minimum": 0, "maximum": 1}
POSE = {"type": "array", "minItems": 16, "maxItems": 16, "items": {"type": "number"},
        "description": "the winning digit capsule's 16 numbers (its length is the class score)"}
ROUTING_TYPES = {"type": "array", "minItems": 32, "maxItems": 32, "items": SHARE,
                 "description": "the same share per primary-capsule type, averaged over the 36 positions"}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ERRORS = {"400": "malformed input; the error says what is wrong",
          "413": "over a limit: more than 256 images (16 for /explain), a body over 16 MiB, an upload over 10 MiB or 16,777,216 pixels",
          "429": "more than 128 requests in the service at once",
          "503": "the batcher's queue is full"}


# The two APIs the project answers itself (serving/routes.py), as BentoML would state them
OUR_APIS = {"classify": '{"images": N x S x S numbers in [0, 1]} (or the same as raw float32, Content-Type:'
                        ' application/octet-stream) -> {"labels": [N], "lengths": [N x 10]}',
            "classify_image": 'multipart field `image` (PNG, JPEG, BMP, GIF, WebP) -> {"label": int, "lengths": [10]}'}
CLIENT_INPUTS = {"classify": ("images", {"dtype": "float32", "format": "json", "title": "Images", "type": "tensor"}),
                 "classify_image": ("image", {"format": "binary", "title": "Image", "type": "file"})}


def fix_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """BentoML's /schema.json with /classify and /classify_image, as BentoML states an API for its clients."""
    for name, (field, spec) in CLIENT_INPUTS.items():
        schema["routes"].append({"name": name, "route": "/" + name, "batchable": False, "doc": OUR_APIS[name],
                                 "input": {"properties": {field: spec}, "required": [field], "title": "Input",
                                           "type": "object"},
                                 "output": {"additionalProperties": True, "type": "object"}, "is_task": False})
        schema.setdefault("paths", {})["/" + name] = {"mounted": False}
    return schema


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def answers(ok: dict[str, Any]) -> dict[str, Any]:
    documented = {"200": {"description": "OK", "content": json_content(ok)}}
    for status, why in ERRORS.items():
        documented[status] = {"description": why, "content": json_content({"$ref": "#/components/schemas/Error"})}
    return documented


# The Open Inference Protocol's routes (serving/v2.py), as its HTTP/REST specification states them
V2_TAG = ["Open Inference Protocol (v2)"]
V2_OUTPUTS = ["lengths", "poses", "reconstruction", "routing_map", "routing_types"]
V2_OUTPUT_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "data": {"type": "array", "items": {"type": "number"}}, "parameters": {"type": "object"}}}
V2_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "outputs": {"type": "array", "items": V2_OUTPUT_TENSOR}}}
V2_METADATA_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}}}}
V2_MODEL = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "platform": {"type": "string"}, "inputs": {"type": "array", "items": V2_METADATA_TENSOR},
    "outputs": {"type": "array", "items": V2_METADATA_TENSOR}}}
V2_SERVER = {"type": "object", "required": ["name", "version", "extensions"], "properties": {
    "name": {"type": "string"}, "version": {"type": "string"}, "extensions": {"type": "array", "items": {"type": "string"}}}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": list(VARIANTS)},
           "description": "the exported file: fp32, int8 or fp16 (those present)"}
V2_ERRORS = {"400": "not a request the protocol and the model take; the error says why",
             "404": "an unknown model or version", "413": "over a limit: more than 256 images, a body over 16 MiB",
             "503": "the batcher's queue is full"}


def image_schemas(size: int, grid: int) -> dict[str, Any]:
    """The schemas that name the image size S, the served graph's (28 for MNIST, 40 or 36 on bigger canvases),
    and its primary-capsule grid G (6 at 28x28)."""
    row = {"type": "array", "minItems": size, "maxItems": size, "items": PIXEL}
    image = {"type": "array", "minItems": size, "maxItems": size, "items": row}
    images = {"description": f"N images of {size}x{size} (or all of 1x{size}x{size}) grey levels"
                             f" in [0, 1], a white digit on black, 1 <= N <= {MAX_BATCH}",
              "anyOf": [{"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": image},
                        {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                         "items": {"type": "array", "minItems": 1, "maxItems": 1, "items": image}}]}
    explain = {"description": images["description"].replace(f"N <= {MAX_BATCH}", f"N <= {MAX_EXPLAIN}"),
               "anyOf": [{**schema, "maxItems": MAX_EXPLAIN} for schema in images["anyOf"]]}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string", "enum": ["image"]}, "datatype": {"type": "string", "enum": ["FP32"]},
        "shape": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "integer", "minimum": 1},
                  "description": f"[N, 1, {size}, {size}], 1 <= N <= {MAX_BATCH}"},
        "data": {"type": "array", "items": PIXEL,
                 "description": f"N x {size * size} numbers in [0, 1], row-major (or nested by the shape)"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}}
    return {
        "image": image,
        "routing_map": {"type": "array", "minItems": grid, "maxItems": grid,
                        "items": {"type": "array", "minItems": grid, "maxItems": grid, "items": SHARE},
                        "description": f"per position of the {grid}x{grid} primary-capsule grid: the mean over its 32"
                                       " capsules of the share of each one's vote that the last routing iteration sent"
                                       " to the winner (0.1: no preference)"},
        "images_body": {"type": "object", "required": ["images"], "properties": {"images": images}},
        "explain_body": {"type": "object", "required": ["images"], "properties": {"images": explain}},
        "octets": {"type": "string", "format": "binary",
                   "description": f"N x {size} x {size} float32 little-endian in [0, 1], raw, 1 <= N <= {MAX_BATCH}"},
        "v2_request": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "enum": V2_OUTPUTS},
                "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}}}},
    }


def v2_answers(ok: dict[str, Any], errors: tuple[str, ...] = ("404",)) -> dict[str, Any]:
    documented = {"200": {"description": "OK", "content": ok}}
    for status in errors:
        documented[status] = {"description": V2_ERRORS[status],
                              "content": json_content({"$ref": "#/components/schemas/Error"})}
    return documented


def v2_paths(shapes: dict[str, Any]) -> dict[str, Any]:
    health = {"200": {"description": "yes"}, "503": {"description": "no: the worker is draining (SIGTERM)"}}
    infer = {"tags": V2_TAG, "summary": "inference: JSON tensors, or the binary tensor data extension",
             "requestBody": {"required": True, "content": json_content(shapes["v2_request"])},
             "responses": v2_answers({**json_content(V2_RESPONSE), "application/octet-stream": {"schema": {
                 "type": "string", "format": "binary", "description": "the JSON header (Inference-Header-Content-Length"
                                                                      " bytes), then each binary output"}}},
                                     ("400", "404", "413", "503"))}
    model = {"tags": V2_TAG, "summary": "model metadata", "responses": v2_answers(json_content(V2_MODEL))}
    ready = {"tags": V2_TAG, "summary": "model readiness", "responses": {**health, "404": {
        "description": V2_ERRORS["404"], "content": json_content({"$ref": "#/components/schemas/Error"})}}}

    def versioned(operation: dict[str, Any]) -> dict[str, Any]:
        return {**operation, "parameters": [VERSION]}

    base, version = "/v2/models/capsnet", "/v2/models/capsnet/versions/{version}"
    return {
        "/v2/health/live": {"get": {"tags": V2_TAG, "summary": "server liveness", "responses": health}},
        "/v2/health/ready": {"get": {"tags": V2_TAG, "summary": "server readiness", "responses": health}},
        "/v2": {"get": {"tags": V2_TAG, "summary": "server metadata", "responses": {"200": {
            "description": "OK", "content": json_content(V2_SERVER)}}}},
        base: {"get": model}, base + "/ready": {"get": ready}, base + "/infer": {"post": infer},
        version: {"get": versioned(model)}, version + "/ready": {"get": versioned(ready)},
        version + "/infer": {"post": versioned(infer)},
    }


def fix(document: dict[str, Any], size: int = IMAGE_SIZE, grid: int = MNIST_GRID) -> dict[str, Any]:
    """BentoML's document -> a valid OpenAPI 3 document that says what the service does, for the served graph's
    image size and primary-capsule grid."""
    paths = document["paths"]
    shapes = image_schemas(size, grid)
    for name, doc in OUR_APIS.items():
        paths["/" + name] = {"post": {"tags": ["Service APIs"], "x-bentoml-name": name, "description": doc,
                                      "operationId": f"capsnet__{name}"}}
    classify = paths["/classify"]["post"]
    classify["requestBody"] = {"required": True, "content": {
        **json_content(shapes["images_body"]), "application/octet-stream": {"schema": shapes["octets"]}}}
    classify["responses"] = answers({"type": "object", "required": ["labels", "lengths"], "properties": {
        "labels": {"type": "array", "items": LABEL}, "lengths": {"type": "array", "items": LENGTHS}}})
    reconstruct = paths["/reconstruct"]["post"]
    reconstruct["requestBody"] = {"required": True, "content": json_content(shapes["images_body"])}
    reconstruct["responses"] = answers({"type": "object", "required": ["labels", "reconstructions"], "properties": {
        "labels": {"type": "array", "items": LABEL}, "reconstructions": {"type": "array", "items": shapes["image"]}}})
    explain = paths["/explain"]["post"]
    explain["requestBody"] = {"required": True, "content": json_content(shapes["explain_body"])}
    explain["responses"] = answers({"type": "object", "properties": {
        "labels": {"type": "array", "items": LABEL}, "lengths": {"type": "array", "items": LENGTHS},
        "poses": {"type": "array", "items": POSE}, "routing_maps": {"type": "array", "items": shapes["routing_map"]},
        "routing_types": {"type": "array", "items": ROUTING_TYPES},
        "reconstructions": {"type": "array", "items": shapes["image"]}},
        "required": ["labels", "lengths", "poses", "routing_maps", "routing_types", "reconstructions"]})
    upload = paths["/classify_image"]["post"]
    upload["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"], "properties": {"image": UPLOAD}}}}}
    upload["responses"] = answers({"type": "object", "required": ["label", "lengths"],
                                   "properties": {"label": LABEL, "lengths": LENGTHS}})
    metadata = paths["/metadata"]["post"]
    metadata["requestBody"] = {"required": False, "content": json_content({"type": "object"})}
    metadata["responses"] = answers({"type": "object", "required": ["model_name", "variant", "providers"]})
    paths.update(v2_paths(shapes))
    # only what the paths refer to: BentoML's others (its task status, with the OpenAPI 3.1 type "null")
    # describe routes this service does not have
    used = json.dumps(paths)
    document["components"]["schemas"] = {"Error": ERROR, **{
        name: schema for name, schema in document["components"]["schemas"].items()
        if f'"#/components/schemas/{name}"' in used}}
    return document
