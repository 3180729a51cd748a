import json
import re

from flotilla_servable import serve

with open("elements.json") as f:
    KNOWN = {k for k in json.load(f) if not k.startswith("_")}

TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


def parse(formula):
    formula = formula.strip()
    if not formula:
        raise ValueError("empty formula")
    counts = {}
    position = 0
    for match in TOKEN.finditer(formula):
        if match.start() != position:
            raise ValueError("cannot read %r at %r" % (formula, formula[position:]))
        symbol, amount = match.group(1), match.group(2)
        if symbol not in KNOWN:
            raise ValueError("%s is not one of the %d elements this model knows" % (symbol, len(KNOWN)))
        counts[symbol] = counts.get(symbol, 0.0) + (float(amount) if amount else 1.0)
        position = match.end()
    if position != len(formula):
        raise ValueError("cannot read %r at %r" % (formula, formula[position:]))
    total = sum(counts.values())
    return {symbol: n / total for symbol, n in counts.items()}


serve(parse)
