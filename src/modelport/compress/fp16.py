"""Float16 conversion with onnxconverter-common: weights and compute in fp16, half the bytes.

With ``keep_io_float32`` the graph keeps float32 inputs and outputs and casts at the border,
so callers feed and receive what they did before.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["convert_fp16"]


def convert_fp16(src: str | Path, dst: str | Path, *, keep_io_float32: bool = True, exclude: Iterable[str] = ()) -> None:
    """Write ``src`` converted to float16; nodes named in ``exclude`` stay float32."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    from modelport.security.loaders import read_onnx

    model = read_onnx(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" is reported by parity instead
        out = float16.convert_float_to_float16(
            model, keep_io_types=keep_io_float32, node_block_list=sorted(exclude) or None
        )
    onnx.save(out, str(dst))
