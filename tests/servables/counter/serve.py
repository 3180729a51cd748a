import os

from flotilla_servable import serve

calls = 0


def run(inputs):
    global calls
    calls += 1
    if any(x == "poison" for x in inputs):
        raise ValueError("poison in the batch")
    return [{"input": x, "call": calls, "batch": len(inputs), "pid": os.getpid()} for x in inputs]


serve(run, batched=True)
