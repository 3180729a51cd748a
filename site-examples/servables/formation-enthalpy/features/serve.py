import json

from flotilla_servable import serve

with open("elements.json") as f:
    ORDER = [k for k in json.load(f) if not k.startswith("_")]
INDEX = {symbol: i for i, symbol in enumerate(ORDER)}


def featurize(fractions):
    vector = [0.0] * len(ORDER)
    for symbol, x in fractions.items():
        if symbol not in INDEX:
            raise ValueError("%s has no feature column" % symbol)
        vector[INDEX[symbol]] = float(x)
    return vector


serve(featurize)
