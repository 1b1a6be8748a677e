"""Builds the MXNet test models. Run with the `mxnet` toolchain's python (not by pytest):

    python mxnet_zoo.py OUT_DIR

- ``resnet18_v1`` and ``mobilenetv2_0.25`` from ``mxnet.gluon.model_zoo.vision`` (10 classes,
  random weights and random batch-norm statistics, no pretrained download), hybridized and
  exported with ``HybridBlock.export``: ``NAME-symbol.json`` + ``NAME-0000.params``.
- ``lenet``: a symbol-API LeNet ending in ``SoftmaxOutput`` (so the graph keeps its training
  label), saved with ``mx.model.save_checkpoint`` at epoch 3 (``lenet-0003.params``).
- ``textrnn``: an embedding-free sequence tagger, a bidirectional ``gluon.rnn.LSTM``
  over (N, T, C) and a per-step ``Dense`` (the ``RNN`` op).
- ``erfnet``: a conv followed by ``F.erf``, an op mx.onnx has no translation for.

Each model's MXNet output on a fixed input is saved beside it (``NAME.io.npz``: x, y) as a
reference that does not go through modelport at all.
"""

import os
import sys
import warnings

warnings.simplefilter("ignore")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet.gluon import nn, rnn  # noqa: E402
from mxnet.gluon.model_zoo import vision  # noqa: E402


def randomize(net, seed):
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith("running_mean"):
            value = rng.normal(0, 0.1, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
            value = rng.normal(0, 1.0 / np.sqrt(max(1, fan_in)), shape)
        p.set_data(mx.nd.array(value.astype("float32")))
    return net


def export(net, out, name, shape, seed):
    net.hybridize()
    x = np.random.RandomState(seed + 1).rand(*shape).astype("float32")
    y = net(mx.nd.array(x)).asnumpy()
    net.export(os.path.join(out, name))
    np.savez(os.path.join(out, name + ".io.npz"), x=x, y=y)


class TextRNN(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.lstm = rnn.LSTM(24, num_layers=1, layout="NTC", bidirectional=True)
            self.out = nn.Dense(7, flatten=False)

    def hybrid_forward(self, F, x):
        return self.out(self.lstm(x))


class ErfNet(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(4, 3, in_channels=3)

    def hybrid_forward(self, F, x):
        return F.erf(self.conv(x))


def lenet(out, seed):
    data = mx.sym.var("data")
    h = mx.sym.Convolution(data, kernel=(5, 5), num_filter=8, name="conv1")
    h = mx.sym.Activation(h, act_type="tanh", name="tanh1")
    h = mx.sym.Pooling(h, pool_type="max", kernel=(2, 2), stride=(2, 2), name="pool1")
    h = mx.sym.Convolution(h, kernel=(5, 5), num_filter=16, name="conv2")
    h = mx.sym.BatchNorm(h, fix_gamma=False, name="bn2")
    h = mx.sym.Activation(h, act_type="relu", name="relu2")
    h = mx.sym.Pooling(h, pool_type="avg", kernel=(2, 2), stride=(2, 2), name="pool2")
    h = mx.sym.FullyConnected(mx.sym.flatten(h), num_hidden=10, name="fc")
    sym = mx.sym.SoftmaxOutput(h, name="softmax")
    shape = (2, 1, 28, 28)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=shape)
    rng = np.random.RandomState(seed)
    args = {n: mx.nd.array(rng.normal(0, 0.3, s).astype("float32"))
            for n, s in zip(sym.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    aux = {"bn2_moving_mean": mx.nd.array(rng.normal(0, 0.1, aux_shapes[0]).astype("float32")),
           "bn2_moving_var": mx.nd.array(rng.uniform(0.5, 1.5, aux_shapes[1]).astype("float32"))}
    mx.model.save_checkpoint(os.path.join(out, "lenet"), 3, sym, args, aux)
    x = np.random.RandomState(seed + 1).rand(*shape).astype("float32")
    ex = sym.bind(mx.cpu(), {**args, "data": mx.nd.array(x), "softmax_label": mx.nd.zeros((2,))},
                  aux_states=aux, grad_req="null")
    y = ex.forward(is_train=False)[0].asnumpy()
    np.savez(os.path.join(out, "lenet.io.npz"), x=x, y=y)


def main(out):
    mx.random.seed(0)
    os.makedirs(out, exist_ok=True)
    for i, (name, shape) in enumerate((("resnet18_v1", (2, 3, 64, 64)), ("mobilenetv2_0.25", (2, 3, 64, 64)))):
        net = vision.get_model(name, classes=10)
        net.initialize()
        net(mx.nd.zeros(shape))  # materialise the deferred shapes before randomizing
        export(randomize(net, i), out, name, shape, i)
    net = TextRNN()
    net.initialize()
    net(mx.nd.zeros((2, 6, 5)))
    export(randomize(net, 5), out, "textrnn", (2, 6, 5), 5)
    net = ErfNet()
    net.initialize()
    export(net, out, "erfnet", (1, 3, 8, 8), 6)
    lenet(out, 7)


if __name__ == "__main__":
    main(sys.argv[1])
