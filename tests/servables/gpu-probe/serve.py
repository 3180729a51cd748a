import os
import time

from flotilla_servable import serve


def allowed_cores():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return ""


def run(inputs):
    time.sleep(float(inputs[0] or 0))
    return [
        {
            "slot": os.environ.get("FLOTILLA_SLOT"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cpus": allowed_cores(),
            "pid": os.getpid(),
        }
        for _ in inputs
    ]


serve(run, batched=True)
