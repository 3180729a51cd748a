import pickle

import numpy as np
from flotilla_servable import serve

with open("model.pkl", "rb") as f:
    model = pickle.load(f)


def predict(images):
    X = np.asarray(images, dtype=float).reshape(len(images), 64)
    return [int(c) for c in model.predict(X)]


serve(predict, batched=True)
