"""The adapt command (``run.adapt``, ``run.check``) and its ONNX -> ONNX passes: ``opset`` converts opsets
(onnx's version converter plus our adapters), ``io`` changes the model's boundary (layout, batch, names,
dtypes, normalization), ``rules`` rewrites ops into what a target has (exact decompositions, named
approximations); ``passes`` wraps each as an ``onnx_ir`` pass for ``ir.passes.Sequential``.
"""
