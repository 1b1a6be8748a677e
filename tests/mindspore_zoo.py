"""Builds the MindSpore test models. Run with the `mindspore` toolchain's python (not by pytest):

    python mindspore_zoo.py OUT_DIR

The MindSpore wheel ships no model classes (and mindcv 0.3.0 fails on MindSpore 2.10: see
tests/test_mindspore.py), so the networks are written here from mindspore.nn layers: LeNet-5
(conv/max-pool/dense, MindSpore's own tutorial network, with a batch norm) and a small ResNet
(three residual stages of basic blocks with 1x1 projection shortcuts, global mean pool, softmax).
Random weights and random batch-norm statistics (so an export that drops them shows). For each:
NAME_cell.py (the Cell class), NAME.ckpt (mindspore.save_checkpoint), NAME.mindir (mindspore.export
with a dynamic batch) and NAME.io.npz (x, y: the PyNative forward on a fixed input, a reference
that does not pass through modelport).
"""

import os
import sys
import warnings

warnings.simplefilter("ignore")

import numpy as np  # noqa: E402

LENET = '''
import mindspore.nn as nn


class LeNet5(nn.Cell):
    """LeNet-5 on 1x32x32 images, 10 classes."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, pad_mode="valid")
        self.conv2 = nn.Conv2d(6, 16, 5, pad_mode="valid")
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Dense(16 * 5 * 5, 120)
        self.fc2 = nn.Dense(120, 84)
        self.fc3 = nn.Dense(84, classes)

    def construct(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.bn(self.conv2(x))))
        x = self.flatten(x)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))
'''

RESNET = '''
import mindspore.nn as nn
import mindspore.ops as ops


class BasicBlock(nn.Cell):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad_mode="pad", padding=1, has_bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, pad_mode="pad", padding=1, has_bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.project = cin != cout or stride != 1
        if self.project:
            self.down = nn.SequentialCell([nn.Conv2d(cin, cout, 1, stride, has_bias=False), nn.BatchNorm2d(cout)])

    def construct(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.project:
            x = self.down(x)
        return self.relu(y + x)


class SmallResNet(nn.Cell):
    """A ResNet-style classifier on 3x32x32 images: stem, 3 stages of basic blocks, mean pool, softmax."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.SequentialCell([nn.Conv2d(3, 16, 3, pad_mode="pad", padding=1, has_bias=False),
                                       nn.BatchNorm2d(16), nn.ReLU()])
        self.stages = nn.SequentialCell([BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)])
        self.mean = ops.ReduceMean(keep_dims=False)
        self.fc = nn.Dense(64, classes)
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, x):
        return self.softmax(self.fc(self.mean(self.stages(self.stem(x)), (2, 3))))
'''

MODELS = {"lenet": (LENET, "LeNet5", (1, 32, 32)), "resnet": (RESNET, "SmallResNet", (3, 32, 32))}


def randomize(net, seed):
    import mindspore as ms

    rng = np.random.RandomState(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        if p.name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif p.name.endswith(("moving_mean", "beta")):
            value = rng.normal(0, 0.1, shape)
        elif p.name.endswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            value = rng.normal(0, 0.5 / np.sqrt(max(1, int(np.prod(shape[1:])) if len(shape) > 1 else 4)), shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net


def main(out):
    import importlib.util

    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    for seed, (name, (source, cls, chw)) in enumerate(MODELS.items()):
        path = os.path.join(out, f"{name}_cell.py")
        with open(path, "w") as fh:
            fh.write(source)
        spec = importlib.util.spec_from_file_location(f"zoo_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # MindSpore's graph parser imports the Cell's module by name
        spec.loader.exec_module(module)
        net = randomize(getattr(module, cls)(), seed)
        x = np.random.RandomState(100 + seed).standard_normal((2, *chw)).astype(np.float32)
        y = net(ms.Tensor(x)).asnumpy()
        np.savez(os.path.join(out, f"{name}.io.npz"), x=x, y=y)
        ms.save_checkpoint(net, os.path.join(out, f"{name}.ckpt"))
        ms.export(net, ms.Tensor(shape=[None, *chw], dtype=ms.float32), file_name=os.path.join(out, name),
                  file_format="MINDIR")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
