import os
import time

from flotilla_servable import serve

# Stands in for heavy imports and a model load.
time.sleep(1.0)
READY_US = int(time.time() * 1_000_000)


def run(x):
    time.sleep(0.05)
    return {
        "input": x,
        "slot": int(os.environ.get("FLOTILLA_SLOT", "-1")),
        "pid": os.getpid(),
        "ready_us": READY_US,
    }


serve(run)
