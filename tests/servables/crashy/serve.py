import os
import sys

from flotilla_servable import serve


def run(x):
    if x == "crash":
        print("about to crash on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    if x == "bad":
        raise ValueError("bad input")
    return x


serve(run)
