"""Trains the digits classifier on scikit-learn's bundled dataset (run at publish)."""
import pickle

from sklearn import datasets, svm

digits = datasets.load_digits()
X = digits.images.reshape(len(digits.images), -1)
model = svm.SVC(gamma=0.001, C=100.0)
model.fit(X, digits.target)
with open("model.pkl", "wb") as f:
    pickle.dump(model, f)
print("trained on %d images; training accuracy %.3f" % (len(X), model.score(X, digits.target)))
