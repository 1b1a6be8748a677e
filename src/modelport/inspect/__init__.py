"""What a model is: format, signature, opset, op histogram, parameters, MACs, size (``run.inspect``)."""
