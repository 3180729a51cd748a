import os
import signal
import sys

from flotilla_servable import serve


def run(x):
    if x == "crash":
        print("about to crash on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    if x == "kill-worker":
        print("killing my worker on purpose", file=sys.stderr, flush=True)
        os.kill(os.getppid(), signal.SIGKILL)
    if x == "bad":
        raise ValueError("bad input")
    return x


serve(run)
