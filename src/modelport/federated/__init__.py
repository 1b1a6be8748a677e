"""Federated learning across frameworks: a canonical parameter space and the Flower apps.

``mapping`` derives and verifies, for one architecture, the map between the canonical state (the
ONNX model's initializers) and each client's local parameters (a PyTorch module, a Keras model, a
modelport-generated PyTorch directory). The Flower apps speak only canonical keys.
"""
