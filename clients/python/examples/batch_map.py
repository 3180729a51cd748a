#!/usr/bin/env python3
"""Fan many inputs out to a servable from a plain batch script.

Reads inputs (one JSON value per line of a file, or generated numbers),
sends them to a servable with ``Client.map`` (which streams: a bounded
window of chunks is in flight while the rest are still being read), and
writes one JSON result per line, in input order. Inputs whose task failed
are written as ``{"error": ...}`` and counted; the exit status is 1 if any
failed.

    python batch_map.py echo --count 10000 --out results.jsonl
    python batch_map.py digits --inputs images.jsonl --out labels.jsonl

The daemon is found as the ``flotilla`` CLI finds it: ``$FLOTILLA_HOME``,
else ``~/.flotilla``.
"""

import argparse
import json
import sys
import time

from flotilla import Client, FlotillaError, TaskError


def read_inputs(path, count):
    """The inputs: JSON lines from ``path``, else ``{"i": 0} ... {"i": count-1}``."""
    if path is None:
        for i in range(count):
            yield {"i": i}
        return
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise SystemExit("%s:%d: not JSON: %s" % (path, number, exc)) from exc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servable", help="NAME or NAME@VERSION")
    parser.add_argument("--inputs", help="JSON-lines file of inputs (default: generated)")
    parser.add_argument(
        "--count", type=int, default=10_000, help="generated inputs (default 10000)"
    )
    parser.add_argument("--params", type=json.loads, default=None, help="parameters, a JSON object")
    parser.add_argument("--out", help="where to write results (default: stdout)")
    parser.add_argument("--chunk", type=int, default=1000, help="inputs per request (default 1000)")
    args = parser.parse_args()

    out = open(args.out, "w") if args.out else sys.stdout
    done = failed = 0
    started = time.monotonic()
    try:
        with Client() as client:
            results = client.map(
                args.servable,
                read_inputs(args.inputs, args.count),
                params=args.params,
                chunk=args.chunk,
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, TaskError):
                    failed += 1
                    out.write(json.dumps({"error": str(result)}) + "\n")
                else:
                    out.write(json.dumps({"output": result}, default=repr) + "\n")
                done += 1
    except FlotillaError as exc:
        print("batch_map: %s" % exc, file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    elapsed = time.monotonic() - started
    print(
        "batch_map: %d inputs, %d failed, %.2f s (%.0f per second)"
        % (done, failed, elapsed, done / elapsed if elapsed else 0.0),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
