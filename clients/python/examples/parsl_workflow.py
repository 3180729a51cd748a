#!/usr/bin/env python3
"""A Parsl workflow whose apps call Flotilla servables.

Parsl runs the workflow's own Python steps; Flotilla serves the models. A
``python_app`` calls a servable the way it calls a function
(``client.run``), and a Flotilla future can be handed to a Parsl app as a
dependency like any other future, because it is a
``concurrent.futures.Future``.

    pip install parsl ./clients/python
    flotilla daemon --detach
    python parsl_workflow.py            # uses the builtin `echo` servable
    python parsl_workflow.py digits     # or any published servable

The steps: ``prepare`` (plain Python) makes each sample's input;
``infer`` (a Parsl app) runs the servable on it through Flotilla;
``summarize`` gathers the answers. A last branch submits one task straight
to Flotilla from the driver and passes its future to a Parsl app.
"""

import sys

import parsl
from flotilla import Client
from parsl import python_app
from parsl.config import Config
from parsl.executors.threads import ThreadPoolExecutor


@python_app
def prepare(sample):
    """A workflow step of its own: build the servable's input."""
    return {"sample": sample, "features": [sample, sample * sample]}


@python_app
def infer(servable, record):
    """Runs the servable on one input through Flotilla and returns its output.

    The client is made inside the app, so the app works wherever Parsl runs
    it (a thread, another process, another node that can reach the daemon's
    state directory). A Client costs one connection, about a millisecond.
    """
    from flotilla import Client

    with Client() as client:
        return client.run(servable, record)


@python_app
def summarize(inputs=()):
    """Joins the answers of every sample (Parsl waits for the futures in
    ``inputs`` and passes their results)."""
    return {"answers": len(inputs), "first": inputs[0], "last": inputs[-1]}


@python_app
def describe(output):
    """A downstream app fed directly by a Flotilla future."""
    return "flotilla answered %r" % (output,)


def main():
    servable = sys.argv[1] if len(sys.argv) > 1 else "echo"
    samples = range(20)
    # Threads keep the example self-contained; a HighThroughputExecutor on
    # a cluster's provider runs the same apps unchanged.
    config = Config(executors=[ThreadPoolExecutor(max_threads=4, label="local")])
    with parsl.load(config):
        answers = [infer(servable, prepare(s)) for s in samples]
        summary = summarize(inputs=answers).result()
        print("summary:", summary)

        with Client() as client:
            future = client.submit(servable, {"sample": "direct"})
            print(describe(future).result())


if __name__ == "__main__":
    main()
