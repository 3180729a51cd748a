"""Trains the digits classifier and exports it to ONNX (run at publish).

The same model as the `digits` example (scikit-learn's SVC on the bundled
UCI digits, no download), converted with skl2onnx. The ONNX graph takes a
batch of 8×8 images (a Reshape in front of the converted classifier, which
takes rows of 64) and gives the predicted digit per image; the script
checks that its predictions equal scikit-learn's on every image.
"""
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn import datasets, svm

digits = datasets.load_digits()
X = digits.images.reshape(len(digits.images), -1)
model = svm.SVC(gamma=0.001, C=100.0)
model.fit(X, digits.target)

# Rows of 64 float32 grey levels in, the label (int64) and class scores out.
with warnings.catch_warnings():
    # Newer scikit-learn deprecates SVC attributes the converter still reads.
    warnings.simplefilter("ignore", FutureWarning)
    converted = to_onnx(model, X[:1].astype(np.float32), options={"zipmap": False},
                        target_opset={"": 17, "ai.onnx.ml": 3})
graph = converted.graph
rows = graph.input[0].name
# Requests are 8×8 images: reshape the batch to rows before the classifier.
shape = helper.make_tensor("rows_shape", TensorProto.INT64, [2], [-1, 64])
graph.initializer.append(shape)
graph.node.insert(0, helper.make_node("Reshape", ["images", "rows_shape"], [rows]))
del graph.input[:]
graph.input.append(helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 8, 8]))
onnx.checker.check_model(converted)
onnx.save(converted, "model.onnx")

import onnxruntime  # noqa: E402  (only to check the export)

session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
labels = session.run(["label"], {"images": digits.images.astype(np.float32)})[0]
same = int((labels == model.predict(X)).sum())
print("exported to model.onnx; predictions equal scikit-learn's on %d of %d images" % (same, len(X)))
if same != len(X):
    raise SystemExit("the ONNX export does not predict what the scikit-learn model does")
