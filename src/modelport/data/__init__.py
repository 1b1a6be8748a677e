"""Data files modelport reads and writes besides .npz: MindRecord (MindSpore's dataset format).

``mindrecord``: read a ``.mindrecord`` file into one array per field (the rows stacked on axis
0) and write arrays as rows, with ``mindspore.mindrecord`` in the `mindspore` toolchain;
``convert``: ``modelport data convert`` between .npz and .mindrecord. ``modelport.inputs.load_npz``
routes a ``.mindrecord`` here, so every option that takes data (``--inputs``, ``--calibration``,
``--eval``, distill ``--data``) takes one.
"""

from __future__ import annotations

from modelport.data.convert import DataConvertReport, convert_data
from modelport.data.mindrecord import is_mindrecord, read_mindrecord, write_mindrecord

__all__ = ["DataConvertReport", "convert_data", "is_mindrecord", "read_mindrecord", "write_mindrecord"]
