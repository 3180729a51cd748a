import pickle

import numpy as np
from flotilla_servable import serve

with open("model.pkl", "rb") as f:
    model = pickle.load(f)


def predict(vectors):
    return [float(v) for v in model.predict(np.asarray(vectors, dtype=float))]


serve(predict, batched=True)
