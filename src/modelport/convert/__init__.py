"""Converters between formats, registered as edges of the route planner, and the convert pipeline."""

from __future__ import annotations

# Importing the converter modules registers their edges; each imports its framework lazily.
from modelport.convert import keras_to_onnx, onnx_to_openvino, onnx_to_tf, onnx_to_torch, torch_to_export, torch_to_onnx  # noqa: F401
from modelport.convert import caffe_to_onnx, tflite_to_onnx  # noqa: F401
from modelport.convert import paddle_to_onnx  # noqa: F401
from modelport.convert import mxnet_to_onnx  # noqa: F401
from modelport.convert import mindspore_to_onnx  # noqa: F401
from modelport.convert import pickle_to_safetensors  # noqa: F401
from modelport.convert import sklearn_to_onnx  # noqa: F401
from modelport.convert.registry import ConvertOptions, ConverterResult, Edge, edges, plan, register

__all__ = ["ConvertOptions", "ConverterResult", "Edge", "edges", "plan", "register"]
