#!/usr/bin/env python3
"""The Python halves of ``bench-fig7``: ONNX Runtime called directly in this
process (the floor every server is measured against) and Ray Serve with
``@serve.batch``, on the same model file, the same threads and the same
session options as the worker's ONNX runtime (2 intra-op threads by
default, idle threads sleeping instead of spinning).

    fig7.py floor MODEL SIDE --batches 1,8,64 [--threads 2] [--singles N] [--reps R]
    fig7.py ray   MODEL SIDE --batches 1,8,64 --max-batch 64 [...]
    fig7.py client SERVABLE,SERVABLE SIDE --home STATE_DIR --batches 64 [...]

Prints one JSON object: ``batch1_ms`` (p50 of single calls one after
another; for Ray a request through a deployment handle) and ``per_request_ms``
for each batch size b (the median time of b requests at once, divided by
b: one session.run of b images for the floor, b concurrent handle calls
for Ray, which its ``@serve.batch`` gathers into model calls of up to
``--max-batch``). Inputs are random float32 images, channels last.
``client`` instead calls Flotilla servables of a running daemon through
this repository's Python client with numpy images, as a user would, and
prints those figures per servable.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def images(n, side, seed=0):
    return np.random.default_rng(seed).random((n, side, side, 3), dtype=np.float32)


def timed(call, reps):
    call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def floor(args):
    s = session(args.model, args.threads)
    name = s.get_inputs()[0].name
    one = images(1, args.side)
    batch1 = timed(lambda: s.run(None, {name: one}), args.singles)
    per_request = {}
    for b in args.batches:
        x = images(b, args.side, seed=b)
        per_request[b] = timed(lambda: s.run(None, {name: x}), args.reps) / b
    return batch1, per_request


def ray_serve(args):
    import asyncio

    import ray
    from ray import serve

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    serve.start(logging_config={"log_level": "WARNING"})

    # A replica takes at most max_ongoing_requests at once (5 by default),
    # which would cap every batch at 5: let it take a whole batch.
    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=args.max_batch,
        ray_actor_options={"num_cpus": args.threads},
    )
    class Model:
        def __init__(self, path, threads):
            self.session = session(path, threads)
            self.name = self.session.get_inputs()[0].name

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=0.002)
        async def __call__(self, batch):
            x = np.stack(batch)
            return list(self.session.run(None, {self.name: x})[0])

    handle = serve.run(Model.bind(args.model, args.threads), name="fig7", route_prefix=None)
    one = images(1, args.side)[0]
    batch1 = timed(lambda: handle.remote(one).result(), args.singles)

    async def many(xs):
        return await asyncio.gather(*[handle.remote(x) for x in xs])

    per_request = {}
    for b in args.batches:
        xs = list(images(b, args.side, seed=b))
        per_request[b] = timed(lambda: asyncio.run(many(xs)), args.reps) / b
    serve.shutdown()
    ray.shutdown()
    return batch1, per_request


def python_client(args):
    """Both Flotilla servables through the Python client, as a user calls
    them with numpy images: ``run`` one after another (batch 1), and
    ``map`` over b images at once. The servables take turns."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "clients", "python"))
    from flotilla import Client

    names = args.model.split(",")
    batch1 = {n: [] for n in names}
    per_request = {n: {b: [] for b in args.batches} for n in names}
    with Client(args.home) as client:
        one = images(1, args.side)[0]
        for name in names:
            list(client.map(name, images(8, args.side)))
        for rep in range(args.reps):
            for name in names[:: 1 if rep % 2 == 0 else -1]:
                batch1[name].append(timed(lambda: client.run(name, one), args.singles // args.reps))
                for b in args.batches:
                    xs = list(images(b, args.side, seed=b))
                    t = time.perf_counter()
                    outputs = list(client.map(name, xs))
                    per_request[name][b].append((time.perf_counter() - t) / b)
                    assert len(outputs) == b
    return {
        name: {
            "batch1_ms": statistics.median(batch1[name]) * 1e3,
            "per_request_ms": {
                str(b): statistics.median(per_request[name][b]) * 1e3 for b in args.batches
            },
        }
        for name in names
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("system", choices=["floor", "ray", "client"])
    p.add_argument("model")
    p.add_argument("side", type=int)
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--singles", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--home", help="client: the daemon's state directory")
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    versions = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    if args.system == "client":
        json.dump({"system": "client", "servables": python_client(args)}, sys.stdout)
        print()
        return
    if args.system == "ray":
        import ray

        versions["ray"] = ray.__version__
        batch1, per_request = ray_serve(args)
    else:
        batch1, per_request = floor(args)
    json.dump(
        {
            "system": args.system,
            "batch1_ms": batch1 * 1e3,
            "per_request_ms": {str(b): t * 1e3 for b, t in per_request.items()},
            "versions": versions,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
