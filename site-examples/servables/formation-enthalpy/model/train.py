"""Generates the training table from the documented rule and trains the model.

Run at publication. The rule (see ../README.md): the formation enthalpy per
atom is -96.5 kJ/mol times the sum over element pairs i<j of
2 x_i x_j (chi_i - chi_j)^2, with x the atom fractions and chi the Pauling
electronegativities in elements.json.
"""
import json
import pickle
import random

from sklearn.ensemble import RandomForestRegressor

with open("elements.json") as f:
    CHI = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
ORDER = list(CHI)
KJ_PER_MOL = 96.5


def enthalpy(fractions):
    items = list(fractions.items())
    total = 0.0
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (a, xa), (b, xb) = items[i], items[j]
            total += 2.0 * xa * xb * (CHI[a] - CHI[b]) ** 2
    return -KJ_PER_MOL * total


def vector(fractions):
    v = [0.0] * len(ORDER)
    for symbol, x in fractions.items():
        v[ORDER.index(symbol)] = x
    return v


rng = random.Random(20211126)
X, y = [], []
for _ in range(3000):
    elements = rng.sample(ORDER, rng.choice([2, 3]))
    counts = {e: rng.randint(1, 4) for e in elements}
    total = sum(counts.values())
    fractions = {e: n / total for e, n in counts.items()}
    X.append(vector(fractions))
    y.append(enthalpy(fractions))

model = RandomForestRegressor(n_estimators=50, min_samples_leaf=2, random_state=0, n_jobs=1)
model.fit(X, y)
with open("model.pkl", "wb") as f:
    pickle.dump(model, f)
print("trained on %d generated compounds; R^2 on them %.3f" % (len(X), model.score(X, y)))
