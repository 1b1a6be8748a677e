"""ONNX element types and their torch / numpy counterparts."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T

TORCH = {
    T.FLOAT: "torch.float32", T.UINT8: "torch.uint8", T.INT8: "torch.int8",
    T.UINT16: "torch.uint16", T.INT16: "torch.int16", T.INT32: "torch.int32",
    T.INT64: "torch.int64", T.BOOL: "torch.bool", T.FLOAT16: "torch.float16",
    T.DOUBLE: "torch.float64", T.UINT32: "torch.uint32", T.UINT64: "torch.uint64",
    T.COMPLEX64: "torch.complex64", T.COMPLEX128: "torch.complex128",
    T.BFLOAT16: "torch.bfloat16", T.FLOAT8E4M3FN: "torch.float8_e4m3fn",
    T.FLOAT8E4M3FNUZ: "torch.float8_e4m3fnuz", T.FLOAT8E5M2: "torch.float8_e5m2",
    T.FLOAT8E5M2FNUZ: "torch.float8_e5m2fnuz",
}
FLOATS = {T.FLOAT, T.FLOAT16, T.DOUBLE, T.BFLOAT16, T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ,
          T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ}
INTS = {T.UINT8, T.INT8, T.UINT16, T.INT16, T.INT32, T.INT64, T.UINT32, T.UINT64}
FLOAT8 = {T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ}


def torch_dtype(elem_type: int) -> str:
    """``"torch.float32"`` for ``TensorProto.FLOAT``; raises KeyError when torch has none."""
    return TORCH[elem_type]


def onnx_type(arr: np.ndarray) -> int:
    from onnx import helper

    try:
        return helper.np_dtype_to_tensor_dtype(arr.dtype)
    except Exception:  # noqa: BLE001
        return T.UNDEFINED


def to_torch(arr: np.ndarray, copy: bool = True):
    """A contiguous torch tensor with the same dtype as ``arr`` (ml_dtypes included).

    ``copy=False`` shares memory where the dtype allows (for a tensor that is only read).
    """
    import torch

    arr = np.ascontiguousarray(arr)
    name = arr.dtype.name
    special = {"bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn,
               "float8_e4m3fnuz": torch.float8_e4m3fnuz, "float8_e5m2": torch.float8_e5m2,
               "float8_e5m2fnuz": torch.float8_e5m2fnuz}
    if name in special:
        bits = np.uint16 if name == "bfloat16" else np.uint8
        return torch.from_numpy(arr.view(bits).copy()).view(special[name])
    if arr.dtype == np.uint16:
        return torch.from_numpy(arr.astype(np.int32)).to(torch.uint16)
    if arr.dtype == np.uint32:
        return torch.from_numpy(arr.astype(np.int64)).to(torch.uint32)
    if arr.dtype == np.uint64:
        return torch.from_numpy(arr.view(np.int64).copy()).view(torch.uint64)
    if copy:
        return torch.from_numpy(arr.copy())
    import warnings

    with warnings.catch_warnings():  # a read-only buffer: the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def to_numpy(t) -> np.ndarray:
    """The inverse of :func:`to_torch`."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    f8 = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e4m3fnuz: "float8_e4m3fnuz",
          torch.float8_e5m2: "float8_e5m2", torch.float8_e5m2fnuz: "float8_e5m2fnuz"}
    if t.dtype in f8:
        import ml_dtypes

        return t.view(torch.uint8).numpy().view(getattr(ml_dtypes, f8[t.dtype]))
    if t.dtype == torch.uint16:
        return t.to(torch.int32).numpy().astype(np.uint16)
    if t.dtype == torch.uint32:
        return t.to(torch.int64).numpy().astype(np.uint32)
    if t.dtype == torch.uint64:
        return t.view(torch.int64).numpy().view(np.uint64)
    return t.numpy()
