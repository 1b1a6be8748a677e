"""Builds the Paddle test models. Run with the `paddle` toolchain's python (not by pytest):

    python paddle_zoo.py OUT_DIR pir      # resnet18.json, ocr.json (+ .pdiparams), ocr_head.py + ocr.pdparams
    FLAGS_enable_pir_api=0 python paddle_zoo.py OUT_DIR legacy   # mobilenet_v3_small.pdmodel (+ .pdiparams)

The networks are Paddle's own (paddle.vision.models ResNet-18 and MobileNetV3-small) and an
OCR-style recognition head (a CRNN: conv stack, then a two-layer bidirectional LSTM over the
width, then per-step class scores), with random weights and random batch-norm statistics
(so a conversion that drops them shows). Each model's dygraph output on a fixed input is saved
beside it (NAME.io.npz: x, y) as a reference that does not go through modelport at all.
"""

import os
import sys
import warnings

warnings.simplefilter("ignore")

import numpy as np  # noqa: E402
import paddle  # noqa: E402

OCR_HEAD = '''
import paddle
from paddle import nn


class CRNNHead(nn.Layer):
    """Text recognition: 3x32xW image -> W/4 steps of 37 class scores (CTC-style)."""

    def __init__(self, classes=37, hidden=48):
        super().__init__()
        def block(cin, cout, pool):
            return [nn.Conv2D(cin, cout, 3, padding=1), nn.BatchNorm2D(cout), nn.ReLU(), nn.MaxPool2D(pool, pool)]
        self.conv = nn.Sequential(*block(3, 16, (2, 2)), *block(16, 32, (2, 2)), *block(32, 48, (2, 1)),
                                  *block(48, 64, (4, 1)))
        self.rnn = nn.LSTM(64, hidden, num_layers=2, direction="bidirect")
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        f = self.conv(x)                 # N, 64, 1, W/4
        f = f.squeeze(2).transpose([0, 2, 1])  # N, W/4, 64
        seq, _ = self.rnn(f)
        return nn.functional.softmax(self.fc(seq), axis=-1)
'''


def randomize(layer, seed):
    rng = np.random.RandomState(seed)
    for name, p in layer.named_parameters():
        scale = 0.5 / np.sqrt(max(1, int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 4))
        p.set_value(rng.normal(0, scale, p.shape).astype("float32"))
    for sub in layer.sublayers():
        if isinstance(sub, paddle.nn.layer.norm._BatchNormBase):
            sub._mean.set_value(rng.normal(0, 0.1, sub._mean.shape).astype("float32"))
            sub._variance.set_value(rng.uniform(0.5, 1.5, sub._variance.shape).astype("float32"))
    layer.eval()
    return layer


def save(layer, out, name, shape, seed):
    x = np.random.RandomState(seed + 1).rand(*shape).astype("float32")
    y = layer(paddle.to_tensor(x)).numpy()
    np.savez(os.path.join(out, name + ".io.npz"), x=x, y=y)
    spec = [paddle.static.InputSpec([None, *shape[1:]], "float32", "x")]
    paddle.jit.save(layer, os.path.join(out, name), input_spec=spec)


def main(out, kind):
    paddle.seed(0)
    os.makedirs(out, exist_ok=True)
    if kind == "legacy":
        net = randomize(paddle.vision.models.mobilenet_v3_small(num_classes=10), 1)
        save(net, out, "mobilenet_v3_small", (2, 3, 64, 64), 1)
        return
    save(randomize(paddle.vision.models.resnet18(num_classes=10), 2), out, "resnet18", (2, 3, 64, 64), 2)
    with open(os.path.join(out, "ocr_head.py"), "w") as fh:
        fh.write(OCR_HEAD)
    sys.path.insert(0, out)
    from ocr_head import CRNNHead

    head = randomize(CRNNHead(), 3)
    paddle.save(head.state_dict(), os.path.join(out, "ocr.pdparams"))
    save(head, out, "ocr", (2, 3, 32, 128), 3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
