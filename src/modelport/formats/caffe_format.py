"""Caffe models: a network definition (``.prototxt``, protobuf text) and its weights (``.caffemodel``).

Both files are ``caffe.NetParameter`` messages. Caffe is not installed (it has no maintained
release), so the message classes are built at run time from the subset of BVLC Caffe's
``caffe.proto`` written out below, with its real field numbers: ``NetParameter``,
``LayerParameter`` and the legacy ``V1LayerParameter``, ``BlobProto``/``BlobShape``, the phase
rules, and the parameter messages of the layers modelport lowers or skips (data, loss and
accuracy layers) plus SSD-Caffe's ``PermuteParameter``. A field outside that subset in a
``.prototxt`` is an error naming its line; a binary ``.caffemodel`` keeps unknown fields unread.

The weights are found beside the ``.prototxt``: ``--weights``, else ``NAME.caffemodel`` with the
same stem, else the only ``.caffemodel`` in its directory.

There is no Caffe runtime here: the runner tells the signature (from the prototxt's inputs and
the lowering's shapes) but cannot run the model, so a conversion from Caffe is verified against
other references (tests/test_caffe.py builds each network in PyTorch from the same weights).
"""

from __future__ import annotations

import dataclasses
import math
import functools
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head

__all__ = ["NAME", "CaffeNet", "Network", "V1_TYPES", "array_blob", "blob_array", "detect", "layer_list", "load",
           "messages", "network", "open", "weights_path"]

NAME = "caffe"
PROTOTXT = ".prototxt"
CAFFEMODEL = ".caffemodel"

# --------------------------------------------------------------------------- the caffe.proto subset
# message -> fields (label, type, name, number, default); a type is a scalar, or a message/enum name
# resolved in the message's own scope first (nested enums), then at package level.
_O, _R = "optional", "repeated"
_ENGINE = ("Engine", ["DEFAULT", "CAFFE", "CUDNN"])

_ENUMS: dict[str, list[str] | list[tuple[str, int]]] = {"Phase": ["TRAIN", "TEST"]}

_SCHEMA: dict[str, dict[str, Any]] = {
    "BlobShape": {"fields": [(_R, "int64", "dim", 1, "packed")]},
    "BlobProto": {"fields": [
        (_O, "BlobShape", "shape", 7, None), (_R, "float", "data", 5, "packed"), (_R, "float", "diff", 6, "packed"),
        (_R, "double", "double_data", 8, "packed"), (_R, "double", "double_diff", 9, "packed"),
        (_O, "int32", "num", 1, 0), (_O, "int32", "channels", 2, 0), (_O, "int32", "height", 3, 0),
        (_O, "int32", "width", 4, 0)]},
    "FillerParameter": {"fields": [
        (_O, "string", "type", 1, "constant"), (_O, "float", "value", 2, 0), (_O, "float", "min", 3, 0),
        (_O, "float", "max", 4, 1), (_O, "float", "mean", 5, 0), (_O, "float", "std", 6, 1),
        (_O, "int32", "sparse", 7, -1), (_O, "VarianceNorm", "variance_norm", 8, "FAN_IN")],
        "enums": {"VarianceNorm": ["FAN_IN", "FAN_OUT", "AVERAGE"]}},
    "NetParameter": {"fields": [
        (_O, "string", "name", 1, None), (_R, "string", "input", 3, None), (_R, "BlobShape", "input_shape", 8, None),
        (_R, "int32", "input_dim", 4, None), (_O, "bool", "force_backward", 5, False), (_O, "NetState", "state", 6, None),
        (_O, "bool", "debug_info", 7, False), (_R, "LayerParameter", "layer", 100, None),
        (_R, "V1LayerParameter", "layers", 2, None)]},
    "NetState": {"fields": [(_O, "Phase", "phase", 1, "TEST"), (_O, "int32", "level", 2, 0),
                            (_R, "string", "stage", 3, None)]},
    "NetStateRule": {"fields": [(_O, "Phase", "phase", 1, None), (_O, "int32", "min_level", 2, None),
                                (_O, "int32", "max_level", 3, None), (_R, "string", "stage", 4, None),
                                (_R, "string", "not_stage", 5, None)]},
    "ParamSpec": {"fields": [(_O, "string", "name", 1, None), (_O, "DimCheckMode", "share_mode", 2, None),
                             (_O, "float", "lr_mult", 3, 1.0), (_O, "float", "decay_mult", 4, 1.0)],
                  "enums": {"DimCheckMode": ["STRICT", "PERMISSIVE"]}},
    "LayerParameter": {"fields": [
        (_O, "string", "name", 1, None), (_O, "string", "type", 2, None), (_R, "string", "bottom", 3, None),
        (_R, "string", "top", 4, None), (_O, "Phase", "phase", 10, None), (_R, "float", "loss_weight", 5, None),
        (_R, "ParamSpec", "param", 6, None), (_R, "BlobProto", "blobs", 7, None),
        (_R, "bool", "propagate_down", 11, None), (_R, "NetStateRule", "include", 8, None),
        (_R, "NetStateRule", "exclude", 9, None),
        (_O, "TransformationParameter", "transform_param", 100, None),
        (_O, "LossParameter", "loss_param", 101, None), (_O, "AccuracyParameter", "accuracy_param", 102, None),
        (_O, "BatchNormParameter", "batch_norm_param", 139, None), (_O, "BiasParameter", "bias_param", 141, None),
        (_O, "ConcatParameter", "concat_param", 104, None),
        (_O, "ConvolutionParameter", "convolution_param", 106, None),
        (_O, "DataParameter", "data_param", 107, None), (_O, "DropoutParameter", "dropout_param", 108, None),
        (_O, "DummyDataParameter", "dummy_data_param", 109, None),
        (_O, "EltwiseParameter", "eltwise_param", 110, None), (_O, "ELUParameter", "elu_param", 140, None),
        (_O, "FlattenParameter", "flatten_param", 135, None),
        (_O, "HDF5DataParameter", "hdf5_data_param", 112, None),
        (_O, "ImageDataParameter", "image_data_param", 115, None),
        (_O, "InnerProductParameter", "inner_product_param", 117, None),
        (_O, "InputParameter", "input_param", 143, None), (_O, "LRNParameter", "lrn_param", 118, None),
        (_O, "MemoryDataParameter", "memory_data_param", 119, None),
        (_O, "PoolingParameter", "pooling_param", 121, None), (_O, "PowerParameter", "power_param", 122, None),
        (_O, "PReLUParameter", "prelu_param", 131, None), (_O, "ReLUParameter", "relu_param", 123, None),
        (_O, "ReshapeParameter", "reshape_param", 133, None), (_O, "ScaleParameter", "scale_param", 142, None),
        (_O, "SigmoidParameter", "sigmoid_param", 124, None), (_O, "SoftmaxParameter", "softmax_param", 125, None),
        (_O, "SliceParameter", "slice_param", 126, None), (_O, "TanHParameter", "tanh_param", 127, None),
        (_O, "PermuteParameter", "permute_param", 202, None)]},
    "TransformationParameter": {"fields": [
        (_O, "float", "scale", 1, 1.0), (_O, "bool", "mirror", 2, False), (_O, "uint32", "crop_size", 3, 0),
        (_O, "string", "mean_file", 4, None), (_R, "float", "mean_value", 5, None),
        (_O, "bool", "force_color", 6, False), (_O, "bool", "force_gray", 7, False)]},
    "LossParameter": {"fields": [(_O, "int32", "ignore_label", 1, None),
                                 (_O, "NormalizationMode", "normalization", 3, "VALID"),
                                 (_O, "bool", "normalize", 2, None)],
                      "enums": {"NormalizationMode": ["FULL", "VALID", "BATCH_SIZE", "NONE"]}},
    "AccuracyParameter": {"fields": [(_O, "uint32", "top_k", 1, 1), (_O, "int32", "axis", 2, 1),
                                     (_O, "int32", "ignore_label", 3, None)]},
    "BatchNormParameter": {"fields": [(_O, "bool", "use_global_stats", 1, None),
                                      (_O, "float", "moving_average_fraction", 2, 0.999),
                                      (_O, "float", "eps", 3, 1e-5)]},
    "BiasParameter": {"fields": [(_O, "int32", "axis", 1, 1), (_O, "int32", "num_axes", 2, 1),
                                 (_O, "FillerParameter", "filler", 3, None)]},
    "ConcatParameter": {"fields": [(_O, "int32", "axis", 2, 1), (_O, "uint32", "concat_dim", 1, 1)]},
    "ConvolutionParameter": {"fields": [
        (_O, "uint32", "num_output", 1, None), (_O, "bool", "bias_term", 2, True), (_R, "uint32", "pad", 3, None),
        (_R, "uint32", "kernel_size", 4, None), (_R, "uint32", "stride", 6, None), (_R, "uint32", "dilation", 18, None),
        (_O, "uint32", "pad_h", 9, 0), (_O, "uint32", "pad_w", 10, 0), (_O, "uint32", "kernel_h", 11, None),
        (_O, "uint32", "kernel_w", 12, None), (_O, "uint32", "stride_h", 13, None), (_O, "uint32", "stride_w", 14, None),
        (_O, "uint32", "group", 5, 1), (_O, "FillerParameter", "weight_filler", 7, None),
        (_O, "FillerParameter", "bias_filler", 8, None), (_O, "Engine", "engine", 15, "DEFAULT"),
        (_O, "int32", "axis", 16, 1), (_O, "bool", "force_nd_im2col", 17, False)], "enums": dict([_ENGINE])},
    "DataParameter": {"fields": [
        (_O, "string", "source", 1, None), (_O, "uint32", "batch_size", 4, None), (_O, "uint32", "rand_skip", 7, 0),
        (_O, "DB", "backend", 8, "LEVELDB"), (_O, "float", "scale", 2, 1.0), (_O, "string", "mean_file", 3, None),
        (_O, "uint32", "crop_size", 5, 0), (_O, "bool", "mirror", 6, False),
        (_O, "bool", "force_encoded_color", 9, False), (_O, "uint32", "prefetch", 10, 4)],
        "enums": {"DB": ["LEVELDB", "LMDB"]}},
    "DropoutParameter": {"fields": [(_O, "float", "dropout_ratio", 1, 0.5)]},
    "DummyDataParameter": {"fields": [
        (_R, "FillerParameter", "data_filler", 1, None), (_R, "BlobShape", "shape", 6, None),
        (_R, "uint32", "num", 2, None), (_R, "uint32", "channels", 3, None), (_R, "uint32", "height", 4, None),
        (_R, "uint32", "width", 5, None)]},
    "EltwiseParameter": {"fields": [(_O, "EltwiseOp", "operation", 1, "SUM"), (_R, "float", "coeff", 2, None),
                                    (_O, "bool", "stable_prod_grad", 3, True)],
                         "enums": {"EltwiseOp": ["PROD", "SUM", "MAX"]}},
    "ELUParameter": {"fields": [(_O, "float", "alpha", 1, 1.0)]},
    "FlattenParameter": {"fields": [(_O, "int32", "axis", 1, 1), (_O, "int32", "end_axis", 2, -1)]},
    "HDF5DataParameter": {"fields": [(_O, "string", "source", 1, None), (_O, "uint32", "batch_size", 2, None),
                                     (_O, "bool", "shuffle", 3, False)]},
    "ImageDataParameter": {"fields": [
        (_O, "string", "source", 1, None), (_O, "uint32", "batch_size", 4, 1), (_O, "uint32", "rand_skip", 7, 0),
        (_O, "bool", "shuffle", 8, False), (_O, "uint32", "new_height", 9, 0), (_O, "uint32", "new_width", 10, 0),
        (_O, "bool", "is_color", 11, True), (_O, "float", "scale", 2, 1.0), (_O, "string", "mean_file", 3, None),
        (_O, "uint32", "crop_size", 5, 0), (_O, "bool", "mirror", 6, False), (_O, "string", "root_folder", 12, "")]},
    "InnerProductParameter": {"fields": [
        (_O, "uint32", "num_output", 1, None), (_O, "bool", "bias_term", 2, True),
        (_O, "FillerParameter", "weight_filler", 3, None), (_O, "FillerParameter", "bias_filler", 4, None),
        (_O, "int32", "axis", 5, 1), (_O, "bool", "transpose", 6, False)]},
    "InputParameter": {"fields": [(_R, "BlobShape", "shape", 1, None)]},
    "LRNParameter": {"fields": [
        (_O, "uint32", "local_size", 1, 5), (_O, "float", "alpha", 2, 1.0), (_O, "float", "beta", 3, 0.75),
        (_O, "NormRegion", "norm_region", 4, "ACROSS_CHANNELS"), (_O, "float", "k", 5, 1.0),
        (_O, "Engine", "engine", 6, "DEFAULT")],
        "enums": {"NormRegion": ["ACROSS_CHANNELS", "WITHIN_CHANNEL"], **dict([_ENGINE])}},
    "MemoryDataParameter": {"fields": [(_O, "uint32", "batch_size", 1, None), (_O, "uint32", "channels", 2, None),
                                       (_O, "uint32", "height", 3, None), (_O, "uint32", "width", 4, None)]},
    "PoolingParameter": {"fields": [
        (_O, "PoolMethod", "pool", 1, "MAX"), (_O, "uint32", "pad", 4, 0), (_O, "uint32", "pad_h", 9, 0),
        (_O, "uint32", "pad_w", 10, 0), (_O, "uint32", "kernel_size", 2, None), (_O, "uint32", "kernel_h", 5, None),
        (_O, "uint32", "kernel_w", 6, None), (_O, "uint32", "stride", 3, 1), (_O, "uint32", "stride_h", 7, None),
        (_O, "uint32", "stride_w", 8, None), (_O, "Engine", "engine", 11, "DEFAULT"),
        (_O, "bool", "global_pooling", 12, False), (_O, "RoundMode", "round_mode", 13, "CEIL")],
        "enums": {"PoolMethod": ["MAX", "AVE", "STOCHASTIC"], "RoundMode": ["CEIL", "FLOOR"], **dict([_ENGINE])}},
    "PowerParameter": {"fields": [(_O, "float", "power", 1, 1.0), (_O, "float", "scale", 2, 1.0),
                                  (_O, "float", "shift", 3, 0.0)]},
    "PReLUParameter": {"fields": [(_O, "FillerParameter", "filler", 1, None),
                                  (_O, "bool", "channel_shared", 2, False)]},
    "ReLUParameter": {"fields": [(_O, "float", "negative_slope", 1, 0.0), (_O, "Engine", "engine", 2, "DEFAULT")],
                      "enums": dict([_ENGINE])},
    "ReshapeParameter": {"fields": [(_O, "BlobShape", "shape", 1, None), (_O, "int32", "axis", 2, 0),
                                    (_O, "int32", "num_axes", 3, -1)]},
    "ScaleParameter": {"fields": [
        (_O, "int32", "axis", 1, 1), (_O, "int32", "num_axes", 2, 1), (_O, "FillerParameter", "filler", 3, None),
        (_O, "bool", "bias_term", 4, False), (_O, "FillerParameter", "bias_filler", 5, None)]},
    "SigmoidParameter": {"fields": [(_O, "Engine", "engine", 1, "DEFAULT")], "enums": dict([_ENGINE])},
    "SoftmaxParameter": {"fields": [(_O, "Engine", "engine", 1, "DEFAULT"), (_O, "int32", "axis", 2, 1)],
                         "enums": dict([_ENGINE])},
    "SliceParameter": {"fields": [(_O, "int32", "axis", 3, 1), (_R, "uint32", "slice_point", 2, None),
                                  (_O, "uint32", "slice_dim", 1, 1)]},
    "TanHParameter": {"fields": [(_O, "Engine", "engine", 1, "DEFAULT")], "enums": dict([_ENGINE])},
    "PermuteParameter": {"fields": [(_R, "uint32", "order", 1, None)]},  # SSD Caffe (weiliu89), field 202
}

# The legacy format (`layers { type: CONVOLUTION }`): V1LayerParameter and its type enum.
V1_TYPES: dict[str, tuple[int, str]] = {
    "NONE": (0, ""), "ABSVAL": (35, "AbsVal"), "ACCURACY": (1, "Accuracy"), "ARGMAX": (30, "ArgMax"),
    "BNLL": (2, "BNLL"), "CONCAT": (3, "Concat"), "CONTRASTIVE_LOSS": (37, "ContrastiveLoss"),
    "CONVOLUTION": (4, "Convolution"), "DATA": (5, "Data"), "DECONVOLUTION": (39, "Deconvolution"),
    "DROPOUT": (6, "Dropout"), "DUMMY_DATA": (32, "DummyData"), "EUCLIDEAN_LOSS": (7, "EuclideanLoss"),
    "ELTWISE": (25, "Eltwise"), "EXP": (38, "Exp"), "FLATTEN": (8, "Flatten"), "HDF5_DATA": (9, "HDF5Data"),
    "HDF5_OUTPUT": (10, "HDF5Output"), "HINGE_LOSS": (28, "HingeLoss"), "IM2COL": (11, "Im2col"),
    "IMAGE_DATA": (12, "ImageData"), "INFOGAIN_LOSS": (13, "InfogainLoss"), "INNER_PRODUCT": (14, "InnerProduct"),
    "LRN": (15, "LRN"), "MEMORY_DATA": (29, "MemoryData"),
    "MULTINOMIAL_LOGISTIC_LOSS": (16, "MultinomialLogisticLoss"), "MVN": (34, "MVN"), "POOLING": (17, "Pooling"),
    "POWER": (26, "Power"), "RELU": (18, "ReLU"), "SIGMOID": (19, "Sigmoid"),
    "SIGMOID_CROSS_ENTROPY_LOSS": (27, "SigmoidCrossEntropyLoss"), "SILENCE": (36, "Silence"),
    "SOFTMAX": (20, "Softmax"), "SOFTMAX_LOSS": (21, "SoftmaxWithLoss"), "SPLIT": (22, "Split"),
    "SLICE": (33, "Slice"), "TANH": (23, "TanH"), "WINDOW_DATA": (24, "WindowData"), "THRESHOLD": (31, "Threshold"),
}
_SCHEMA["V1LayerParameter"] = {"fields": [
    (_R, "string", "bottom", 2, None), (_R, "string", "top", 3, None), (_O, "string", "name", 4, None),
    (_R, "NetStateRule", "include", 32, None), (_R, "NetStateRule", "exclude", 33, None),
    (_O, "LayerType", "type", 5, None), (_R, "BlobProto", "blobs", 6, None), (_R, "string", "param", 1001, None),
    (_R, "float", "blobs_lr", 7, None), (_R, "float", "weight_decay", 8, None), (_R, "float", "loss_weight", 35, None),
    (_O, "AccuracyParameter", "accuracy_param", 27, None), (_O, "ConcatParameter", "concat_param", 9, None),
    (_O, "ConvolutionParameter", "convolution_param", 10, None), (_O, "DataParameter", "data_param", 11, None),
    (_O, "DropoutParameter", "dropout_param", 12, None), (_O, "DummyDataParameter", "dummy_data_param", 26, None),
    (_O, "EltwiseParameter", "eltwise_param", 24, None), (_O, "HDF5DataParameter", "hdf5_data_param", 13, None),
    (_O, "ImageDataParameter", "image_data_param", 15, None),
    (_O, "InnerProductParameter", "inner_product_param", 17, None), (_O, "LRNParameter", "lrn_param", 18, None),
    (_O, "MemoryDataParameter", "memory_data_param", 22, None), (_O, "PoolingParameter", "pooling_param", 19, None),
    (_O, "PowerParameter", "power_param", 21, None), (_O, "ReLUParameter", "relu_param", 30, None),
    (_O, "SigmoidParameter", "sigmoid_param", 38, None), (_O, "SoftmaxParameter", "softmax_param", 39, None),
    (_O, "SliceParameter", "slice_param", 31, None), (_O, "TanHParameter", "tanh_param", 37, None),
    (_O, "TransformationParameter", "transform_param", 36, None), (_O, "LossParameter", "loss_param", 42, None)],
    "enums": {"LayerType": [(k, v[0]) for k, v in V1_TYPES.items()]}}


@functools.cache
def messages() -> dict[str, type]:
    """The message classes of the caffe.proto subset, by name (``messages()["NetParameter"]``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="modelport_caffe_subset.proto", package="caffe", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    scalars = {"double": F.TYPE_DOUBLE, "float": F.TYPE_FLOAT, "int64": F.TYPE_INT64, "int32": F.TYPE_INT32,
               "uint32": F.TYPE_UINT32, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING}
    for name, values in _ENUMS.items():
        _add_enum(fdp.enum_type.add(), name, values)
    for name, spec in _SCHEMA.items():
        msg = fdp.message_type.add(name=name)
        nested = spec.get("enums", {})
        for enum_name, values in nested.items():
            _add_enum(msg.enum_type.add(), enum_name, values)
        for label, type_, fname, number, default in spec["fields"]:
            field = msg.field.add(name=fname, number=number,
                                  label=F.LABEL_REPEATED if label == _R else F.LABEL_OPTIONAL)
            if type_ in scalars:
                field.type = scalars[type_]
            elif type_ in nested or type_ in _ENUMS:
                field.type = F.TYPE_ENUM
                field.type_name = f".caffe.{name}.{type_}" if type_ in nested else f".caffe.{type_}"
            else:
                field.type = F.TYPE_MESSAGE
                field.type_name = f".caffe.{type_}"
            if default == "packed":
                field.options.packed = True
            elif default is not None and label == _O:
                field.default_value = str(default).lower() if isinstance(default, bool) else str(default)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in _SCHEMA}


def _add_enum(enum, name: str, values) -> None:
    enum.name = name
    for i, v in enumerate(values):
        label, number = v if isinstance(v, tuple) else (v, i)
        enum.value.add(name=label, number=number)


# --------------------------------------------------------------------------- blobs


def blob_array(blob) -> np.ndarray:
    """A BlobProto's values as float32, in its shape (``shape``, or legacy num/channels/height/width)."""
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        legacy = (blob.num, blob.channels, blob.height, blob.width)
        shape = tuple(int(d) for d in legacy) if any(legacy) else (data.size,)
    if len(shape) > 32 or any(d < 0 for d in shape) or math.prod(shape) != data.size:  # exact: no int64 wrap
        shown = list(shape) if len(shape) <= 8 else f"of {len(shape)} dims"
        raise BadInputError(f"weights blob holds {data.size} values for shape {shown}")
    return data.reshape(shape)


def array_blob(array: np.ndarray):
    """A BlobProto holding ``array`` (float32, with its shape)."""
    blob = messages()["BlobProto"]()
    arr = np.asarray(array, dtype=np.float32)
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.ravel().tolist())
    return blob


# --------------------------------------------------------------------------- files


def weights_path(prototxt: str | Path, weights: str | None = None) -> Path:
    """The .caffemodel of a .prototxt: ``weights``, the same stem, or the only one beside it."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise BadInputError("no such weights file", path=path)
        return path
    proto = Path(prototxt)
    same = proto.with_suffix(CAFFEMODEL)
    if same.is_file():
        return same
    beside = sorted(p for p in proto.parent.glob(f"*{CAFFEMODEL}") if p.is_file())
    if len(beside) == 1:
        return beside[0]
    what = f"{len(beside)} .caffemodel files beside it" if beside else "no .caffemodel beside it"
    raise BadInputError(f"Caffe network without its weights ({what}): give --weights MODEL.caffemodel", path=proto)


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix == CAFFEMODEL:
        return True  # refused with a pointer to the prototxt when opened
    if suffix != PROTOTXT:
        return False
    head = read_head(path, 4096).decode("utf-8", "replace")
    return any(word in head for word in ("layer", "input"))


def _parse_text(path: Path):
    from google.protobuf import text_format

    net = messages()["NetParameter"]()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the network definition ({exc})", path=path) from None
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as exc:
        strict = str(exc).splitlines()[0]
        lenient = messages()["NetParameter"]()
        try:
            text_format.Merge(text, lenient, allow_unknown_field=True)
        except text_format.ParseError:
            raise BadInputError(f"not a Caffe network definition ({strict})", path=path) from None
        return lenient, strict
    return net, None


def _parse_binary(path: Path):
    from google.protobuf.message import DecodeError

    net = messages()["NetParameter"]()
    try:
        net.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadInputError(f"not a Caffe NetParameter ({str(exc) or type(exc).__name__})", path=path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read the weights ({exc.strerror})", path=path) from None
    layers = [*net.layer, *net.layers]
    if not layers or not any(layer.name for layer in layers):
        raise BadInputError("not a Caffe NetParameter (no named layers in it)", path=path)
    return net


def layer_list(net) -> list:
    """The layers of a NetParameter as LayerParameter messages (V1 layers upgraded: type names, blobs)."""
    if len(net.layer):
        return list(net.layer)
    names = {number: name for number, name in V1_TYPES.values()}
    v1_enum = messages()["V1LayerParameter"].DESCRIPTOR.enum_types_by_name["LayerType"]
    out = []
    for old in net.layers:
        new = messages()["LayerParameter"](name=old.name, bottom=old.bottom, top=old.top, blobs=old.blobs,
                                           include=old.include, exclude=old.exclude)
        new.type = names.get(old.type) or v1_enum.values_by_number[old.type].name
        for field, value in old.ListFields():
            if field.name.endswith("_param") and field.name in new.DESCRIPTOR.fields_by_name:
                getattr(new, field.name).CopyFrom(value)
        out.append(new)
    return out


@dataclasses.dataclass(frozen=True)
class CaffeNet:
    """A parsed Caffe model: the network (prototxt) and the blobs of each layer (caffemodel) by name."""

    prototxt: str
    caffemodel: str
    net: Any
    layers: tuple
    blobs: dict[str, tuple[np.ndarray, ...]]
    strict_error: str | None  # the prototxt had fields outside the caffe.proto subset (parsed leniently)


def load(path: str | Path, weights: str | None = None) -> CaffeNet:
    """Parse a .prototxt and its .caffemodel; BadInputError on unreadable files."""
    path = Path(path)
    if path.suffix.lower() == CAFFEMODEL:
        raise BadInputError("a .caffemodel holds the weights only: give the network's .prototxt "
                            "(with --weights this file)", path=path)
    net, strict = _parse_text(path)
    model = weights_path(path, weights)
    trained = _parse_binary(model)
    blobs: dict[str, tuple[np.ndarray, ...]] = {}
    for layer in layer_list(trained):
        if len(layer.blobs):
            try:
                blobs[layer.name] = tuple(blob_array(b) for b in layer.blobs)
            except BadInputError as exc:
                raise BadInputError(f"layer {layer.name!r}: {exc}", path=model) from None
    return CaffeNet(str(path), str(model), net, tuple(layer_list(net)), blobs, strict)


# --------------------------------------------------------------------------- the network at inference

DATA_LAYERS = ("Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData")
TRAINING_ONLY = ("Accuracy", "Silence")  # and every type ending in "Loss"


@dataclasses.dataclass(frozen=True)
class Network:
    """The layers Caffe runs in the TEST phase, with the graph's inputs (name, shape or None) and outputs."""

    layers: tuple
    inputs: tuple[tuple[str, tuple[int, ...] | None], ...]
    outputs: tuple[str, ...]
    dropped: tuple[str, ...]  # "name (Type)" of training-only layers left out


def _meets(rule, state) -> bool:
    """Caffe's NetStateRule check (net.cpp StateMeetsRule)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    return all(s in state.stage for s in rule.stage) and not any(s in state.stage for s in rule.not_stage)


def _active(layer, state) -> bool:
    if len(layer.include):
        return any(_meets(r, state) for r in layer.include)
    return not any(_meets(r, state) for r in layer.exclude)


def _shape(blob_shape) -> tuple[int, ...]:
    return tuple(int(d) for d in blob_shape.dim)


def _data_shape(layer) -> tuple[int, ...] | None:
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return (p.batch_size, p.channels, p.height, p.width)
    if layer.type == "DummyData" and len(layer.dummy_data_param.shape):
        return _shape(layer.dummy_data_param.shape[0])
    return None


def network(caffe: CaffeNet) -> Network:
    """The inference network of a parsed model: TEST-phase layers, its inputs and its outputs."""
    net = caffe.net
    state = messages()["NetState"](phase="TEST", level=net.state.level, stage=net.state.stage)
    inputs: list[tuple[str, tuple[int, ...] | None]] = []
    dims = list(net.input_dim)
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            inputs.append((name, _shape(net.input_shape[i])))
        elif len(dims) >= 4 * (i + 1):
            inputs.append((name, tuple(int(d) for d in dims[4 * i:4 * i + 4])))
        else:
            inputs.append((name, None))
    layers, dropped = [], []
    for layer in caffe.layers:
        if not _active(layer, state):
            continue
        if layer.type == "Input":
            shapes = [_shape(s) for s in layer.input_param.shape]
            for i, top in enumerate(layer.top):
                inputs.append((top, shapes[i] if i < len(shapes) else (shapes[0] if len(shapes) == 1 else None)))
        elif layer.type in DATA_LAYERS:
            if len(layer.top):
                inputs.append((layer.top[0], _data_shape(layer)))  # further tops (labels) are not model inputs
        elif layer.type.endswith("Loss") or layer.type in TRAINING_ONLY:
            dropped.append(f"{layer.name} ({layer.type})")
        else:
            layers.append(layer)
    if not inputs:
        raise BadInputError("the network has no inputs (no Input or data layer, no input: field)", path=caffe.prototxt)
    unread: dict[str, bool] = {}  # blob -> its latest version is read by no later layer (first-write order)
    for layer in layers:
        for b in layer.bottom:
            if b not in layer.top:  # an in-place layer writes the version it reads
                unread[b] = False
        for t in layer.top:
            unread[t] = True
    outputs = [b for b, open_ in unread.items() if open_]
    return Network(tuple(layers), tuple(inputs), tuple(outputs), tuple(dropped))


class CaffeRunner(BaseRunner):
    """A Caffe model's signature; it cannot run (no Caffe runtime exists here)."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.net = network(load(path, options.weights))
        inputs = tuple(TensorSpec(n, "float32", None if s is None else ("batch", *s[1:])) for n, s in self.net.inputs)
        outputs = tuple(TensorSpec(n, "float32", None) for n in self.net.outputs)  # shapes: convert to ONNX to see them
        self._signature = Signature(fill_signature(inputs, options.inputs, path), outputs)

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise UnsupportedError("cannot run a Caffe model: no Caffe runtime exists for modelport; convert it with "
                               "--no-verify and verify the ONNX against reference outputs (modelport verify)",
                               path=self.path)


def open(path: str, options: LoadOptions) -> CaffeRunner:  # noqa: A001
    return CaffeRunner(path, options)
