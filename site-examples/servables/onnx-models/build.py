"""Writes the ONNX models of the Fig. 7 workloads, with random weights.

    python3 build.py cifar10 model.onnx      # CIFAR-10-sized CNN, input N×32×32×3
    python3 build.py inception model.onnx    # Inception-v3-shaped network, input N×299×299×3

Nothing is downloaded: the graphs are built layer by layer with the `onnx`
package and every weight is drawn from a seeded random generator (He
initialisation, so activations stay in range). The predictions mean
nothing; the cost of inference (the layers, their shapes, the arithmetic)
is that of a trained model of the same architecture. Convolutions carry a
bias in place of batch normalisation, which is what an inference graph
has once normalisation is folded into them. Inputs are channels-last
images (as a client sends them) with a dynamic batch axis `N`; the output
is the softmax over the classes, N×10 or N×1000.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Graph:
    """Collects nodes and random initialisers."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, kind):
        self.count += 1
        return f"{kind}_{self.count}"

    def weight(self, shape, fan_in):
        name = self.name("w")
        w = self.rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.inits.append(numpy_helper.from_array(w, name))
        return name

    def bias(self, n):
        name = self.name("b")
        self.inits.append(numpy_helper.from_array(np.zeros(n, np.float32), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, kernel, stride=1, pad=None):
        """Convolution with bias and ReLU; `pad` None keeps the size ("same")."""
        kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
        if pad is None:
            pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        else:
            pads = [pad] * 4
        w = self.weight((cout, cin, kh, kw), cin * kh * kw)
        y = self.node("Conv", [x, w, self.bias(cout)], kernel_shape=[kh, kw],
                      strides=[stride, stride], pads=pads)
        return self.node("Relu", [y])

    def maxpool(self, x, k, stride, pad=0):
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def avgpool(self, x, k, stride, pad):
        return self.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, count_include_pad=0)

    def concat(self, xs):
        return self.node("Concat", xs, axis=1)

    def dense(self, x, nin, nout, relu):
        w = self.weight((nin, nout), nin)
        y = self.node("Gemm", [x, w, self.bias(nout)])
        return self.node("Relu", [y]) if relu else y

    def model(self, name, side, classes, body):
        x = self.node("Transpose", ["images"], perm=[0, 3, 1, 2])
        logits = body(self, x)
        self.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", side, side, 3])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="flotilla site-examples (random weights)")
        onnx.checker.check_model(model)
        return model


def cifar10(g, x):
    """Two blocks of two 3×3 convolutions and a pool, then two dense layers."""
    x = g.conv(x, 3, 32, 3)
    x = g.conv(x, 32, 32, 3)
    x = g.maxpool(x, 2, 2)
    x = g.conv(x, 32, 64, 3)
    x = g.conv(x, 64, 64, 3)
    x = g.maxpool(x, 2, 2)
    x = g.node("Flatten", [x], axis=1)
    x = g.dense(x, 64 * 8 * 8, 512, relu=True)
    return g.dense(x, 512, 10, relu=False)


def inception_a(g, x, cin, pool):
    b1 = g.conv(x, cin, 64, 1)
    b5 = g.conv(g.conv(x, cin, 48, 1), 48, 64, 5)
    b3 = g.conv(g.conv(g.conv(x, cin, 64, 1), 64, 96, 3), 96, 96, 3)
    bp = g.conv(g.avgpool(x, 3, 1, 1), cin, pool, 1)
    return g.concat([b1, b5, b3, bp]), 64 + 64 + 96 + pool


def inception_b(g, x, cin):
    b3 = g.conv(x, cin, 384, 3, stride=2, pad=0)
    bd = g.conv(g.conv(g.conv(x, cin, 64, 1), 64, 96, 3), 96, 96, 3, stride=2, pad=0)
    bp = g.maxpool(x, 3, 2)
    return g.concat([b3, bd, bp]), 384 + 96 + cin


def inception_c(g, x, cin, c7):
    b1 = g.conv(x, cin, 192, 1)
    b7 = g.conv(g.conv(g.conv(x, cin, c7, 1), c7, c7, (1, 7)), c7, 192, (7, 1))
    bd = g.conv(x, cin, c7, 1)
    for k in [(7, 1), (1, 7), (7, 1)]:
        bd = g.conv(bd, c7, c7, k)
    bd = g.conv(bd, c7, 192, (1, 7))
    bp = g.conv(g.avgpool(x, 3, 1, 1), cin, 192, 1)
    return g.concat([b1, b7, bd, bp]), 768


def inception_d(g, x, cin):
    b3 = g.conv(g.conv(x, cin, 192, 1), 192, 320, 3, stride=2, pad=0)
    b7 = g.conv(x, cin, 192, 1)
    b7 = g.conv(g.conv(b7, 192, 192, (1, 7)), 192, 192, (7, 1))
    b7 = g.conv(b7, 192, 192, 3, stride=2, pad=0)
    bp = g.maxpool(x, 3, 2)
    return g.concat([b3, b7, bp]), 320 + 192 + cin


def inception_e(g, x, cin):
    b1 = g.conv(x, cin, 320, 1)
    b3 = g.conv(x, cin, 384, 1)
    b3 = g.concat([g.conv(b3, 384, 384, (1, 3)), g.conv(b3, 384, 384, (3, 1))])
    bd = g.conv(g.conv(x, cin, 448, 1), 448, 384, 3)
    bd = g.concat([g.conv(bd, 384, 384, (1, 3)), g.conv(bd, 384, 384, (3, 1))])
    bp = g.conv(g.avgpool(x, 3, 1, 1), cin, 192, 1)
    return g.concat([b1, b3, bd, bp]), 320 + 768 + 768 + 192


def inception(g, x):
    """Inception v3's layout (Szegedy et al. 2016, arXiv:1512.00567): the
    stem, 3 × 35×35 blocks, a reduction, 4 × 17×17 blocks with factorised
    7×7 convolutions, a reduction, 2 × 8×8 blocks, global pooling."""
    x = g.conv(x, 3, 32, 3, stride=2, pad=0)   # 149
    x = g.conv(x, 32, 32, 3, pad=0)            # 147
    x = g.conv(x, 32, 64, 3)                   # 147
    x = g.maxpool(x, 3, 2)                     # 73
    x = g.conv(x, 64, 80, 1)
    x = g.conv(x, 80, 192, 3, pad=0)           # 71
    x = g.maxpool(x, 3, 2)                     # 35
    c = 192
    for pool in (32, 64, 64):
        x, c = inception_a(g, x, c, pool)
    x, c = inception_b(g, x, c)                # 17
    for c7 in (128, 160, 160, 192):
        x, c = inception_c(g, x, c, c7)
    x, c = inception_d(g, x, c)                # 8
    for _ in range(2):
        x, c = inception_e(g, x, c)
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    return g.dense(x, c, 1000, relu=False)


MODELS = {
    "cifar10": ("cifar10_cnn", 32, 10, cifar10),
    "inception": ("inception_v3_shaped", 299, 1000, inception),
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in MODELS:
        sys.exit("usage: build.py cifar10|inception OUT.onnx")
    name, side, classes, body = MODELS[sys.argv[1]]
    model = Graph(seed=7).model(name, side, classes, body)
    onnx.save(model, sys.argv[2])
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"{sys.argv[2]}: {name}, input N×{side}×{side}×3, {params:,} random weights")


if __name__ == "__main__":
    main()
