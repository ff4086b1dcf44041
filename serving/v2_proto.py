"""The Open Inference Protocol's gRPC messages (package `inference`), built at import from their field numbers.

The protocol fixes each message's fields by name, number and type; that is what goes over the wire, and what
`tritonclient.grpc` and KServe's clients send. Rather than generated code (a protoc run, and a protobuf runtime
pinned to the generator's version), the descriptor is written here as data and protobuf's message factory makes
the classes: the service's six methods and only the messages they take and give.

    from serving.v2_proto import MESSAGES, SERVICE
    MESSAGES["ModelInferRequest"].FromString(data)
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
F = descriptor_pb2.FieldDescriptorProto
TYPES = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "int64": F.TYPE_INT64, "int32": F.TYPE_INT32,
         "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64, "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE,
         "bytes": F.TYPE_BYTES}

# message: (field name, number, type or message, repeated); a type in TYPES is a scalar, anything else a message
# of this package. "map" fields are written as protobuf writes a map: a repeated entry message (key 1, value 2).
PARAMETERS = "map<string, InferParameter>"
FIELDS: dict[str, list[tuple[str, int, str, bool]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool", False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool", False)],
    "ModelReadyRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelReadyResponse": [("ready", 1, "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string", False), ("version", 2, "string", False),
                               ("extensions", 3, "string", True)],
    "ModelMetadataRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelMetadataResponse": [("name", 1, "string", False), ("versions", 2, "string", True),
                              ("platform", 3, "string", False), ("inputs", 4, "TensorMetadata", True),
                              ("outputs", 5, "TensorMetadata", True)],
    "TensorMetadata": [("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True)],
    "InferParameter": [("bool_param", 1, "bool", False), ("int64_param", 2, "int64", False),
                       ("string_param", 3, "string", False)],  # one of the three (the protocol's oneof)
    "InferTensorContents": [("bool_contents", 1, "bool", True), ("int_contents", 2, "int32", True),
                            ("int64_contents", 3, "int64", True), ("uint_contents", 4, "uint32", True),
                            ("uint64_contents", 5, "uint64", True), ("fp32_contents", 6, "float", True),
                            ("fp64_contents", 7, "double", True), ("bytes_contents", 8, "bytes", True)],
    "InferInputTensor": [("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True),
                         ("parameters", 4, PARAMETERS, True), ("contents", 5, "InferTensorContents", False)],
    "InferRequestedOutputTensor": [("name", 1, "string", False), ("parameters", 2, PARAMETERS, True)],
    "ModelInferRequest": [("model_name", 1, "string", False), ("model_version", 2, "string", False),
                          ("id", 3, "string", False), ("parameters", 4, PARAMETERS, True),
                          ("inputs", 5, "InferInputTensor", True), ("outputs", 6, "InferRequestedOutputTensor", True),
                          ("raw_input_contents", 7, "bytes", True)],
    "InferOutputTensor": [("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True),
                          ("parameters", 4, PARAMETERS, True), ("contents", 5, "InferTensorContents", False)],
    "ModelInferResponse": [("model_name", 1, "string", False), ("model_version", 2, "string", False),
                           ("id", 3, "string", False), ("parameters", 4, PARAMETERS, True),
                           ("outputs", 5, "InferOutputTensor", True), ("raw_output_contents", 6, "bytes", True)],
}
# Messages the protocol nests in another (their full names are the wire's: inference.ModelInferRequest.InferInputTensor)
NESTED = {"TensorMetadata": "ModelMetadataResponse", "InferInputTensor": "ModelInferRequest",
          "InferRequestedOutputTensor": "ModelInferRequest", "InferOutputTensor": "ModelInferResponse"}
METHODS = {name: (f"{name}Request", f"{name}Response") for name in
           ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")}


def full_name(message: str) -> str:
    return f".{PACKAGE}." + (f"{NESTED[message]}.{message}" if message in NESTED else message)


def message_proto(name: str) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto(name=name)
    for field, number, kind, repeated in FIELDS[name]:
        label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
        if kind == PARAMETERS:  # map<string, InferParameter>: a nested entry type, as protoc writes it
            entry = f"{field.title()}Entry"
            proto.nested_type.add(name=entry, options=descriptor_pb2.MessageOptions(map_entry=True)).field.extend([
                F(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL),
                F(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=full_name("InferParameter"))])
            proto.field.add(name=field, number=number, type=F.TYPE_MESSAGE, label=label,
                            type_name=f"{full_name(name)}.{entry}")
        elif kind in TYPES:
            proto.field.add(name=field, number=number, type=TYPES[kind], label=label)
        else:
            proto.field.add(name=field, number=number, type=F.TYPE_MESSAGE, label=label, type_name=full_name(kind))
    if name == "InferParameter":
        proto.oneof_decl.add(name="parameter_choice")
        for field in proto.field:
            field.oneof_index = 0
    return proto


def file_proto() -> descriptor_pb2.FileDescriptorProto:
    """The protocol's messages and service, as the file descriptor protoc would write for them."""
    proto = descriptor_pb2.FileDescriptorProto(name="capsnet_open_inference.proto", package=PACKAGE, syntax="proto3")
    protos = {name: message_proto(name) for name in FIELDS}
    for name, message in protos.items():
        if name not in NESTED:
            proto.message_type.append(message)
    for name, parent in NESTED.items():
        next(m for m in proto.message_type if m.name == parent).nested_type.append(protos[name])
    service = proto.service.add(name="GRPCInferenceService")
    for method, (request, response) in METHODS.items():
        service.method.add(name=method, input_type=full_name(request), output_type=full_name(response))
    return proto


POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(file_proto())
MESSAGES = {name: message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name(name)[1:])) for name in FIELDS}
