"""Serve a Python model to a Flotilla worker.

A servable script loads its model once and hands a function to ``serve``::

    from flotilla_servable import serve
    model = load_my_model()
    serve(lambda x: model.predict([x])[0])

``serve`` speaks the servable stdio protocol (docs/servable-protocol.md):
length-prefixed msgpack frames on stdin and stdout. The worker keeps the
process warm and sends it batches of inputs. With ``batched=False`` (the
default) the function gets one input at a time and an exception fails only
that input. With ``batched=True`` it gets the list of inputs and returns a
list of outputs; an exception then fails the call as a whole, and the daemon
retries each input on its own, so one bad input cannot fail its neighbours.

Anything the model prints goes to stderr (stdout carries the protocol), and
the worker logs it with the ids of the tasks being run.
"""

import os
import signal
import socket
import struct
import sys
import traceback

import msgpack


__all__ = ["serve"]

_HEADER = struct.Struct(">I")


def _to_plain(obj):
    """msgpack cannot encode numpy values; turn them into plain Python."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError("cannot send a %s back to Flotilla" % type(obj).__name__)


def _read(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def _write(stream, message):
    body = msgpack.packb(message, use_bin_type=True, default=_to_plain)
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def _error(exc):
    return "%s: %s" % (type(exc).__name__, exc)


def _run_each(fn, inputs, params):
    outputs = []
    for value in inputs:
        try:
            outputs.append({"output": _encodable(fn(value, **params))})
        except Exception as exc:  # one input's failure is its own
            traceback.print_exc(file=sys.stderr)
            outputs.append({"error": _error(exc)})
    return {"type": "outputs", "outputs": outputs}


def _run_batch(fn, inputs, params):
    try:
        results = list(fn(inputs, **params))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"type": "failed", "message": _error(exc)}
    if len(results) != len(inputs):
        return {
            "type": "failed",
            "message": "the model returned %d outputs for %d inputs"
            % (len(results), len(inputs)),
        }
    return {"type": "outputs", "outputs": [{"output": _encodable(r)} for r in results]}


def _encodable(value):
    # Fail inside the model's try/except rather than in the protocol writer.
    msgpack.packb(value, use_bin_type=True, default=_to_plain)
    return value


def serve(fn, batched=False, init=None):
    """Answer the worker's requests with ``fn`` until it says to stop.

    ``init(spec, parameters)``, if given, runs once before the first request.

    Started as a template (``FLOTILLA_TEMPLATE_SOCKET`` set: a servable
    with ``[options] fork = true``), the process forks slot processes from
    here instead, each of which goes on to serve.
    """
    template = os.environ.pop(_TEMPLATE_SOCKET_ENV, None)
    if template:
        _become_template(template)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    # Keep stray prints off the protocol stream.
    sys.stdout = sys.stderr
    while True:
        message = _read(stdin)
        if message is None:
            return
        kind = message.get("type")
        if kind == "init":
            try:
                if init is not None:
                    init(message.get("spec"), message.get("parameters") or {})
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                _write(stdout, {"type": "failed", "message": _error(exc)})
                return
            _write(stdout, {"type": "ready"})
        elif kind == "run":
            inputs = message.get("inputs") or []
            params = message.get("parameters") or {}
            run = _run_batch if batched else _run_each
            _write(stdout, run(fn, inputs, params))
        elif kind == "shutdown":
            return
        else:
            _write(stdout, {"type": "failed", "message": "unknown message type %r" % (kind,)})


# ----- templates: fork slot processes from one that has loaded the model -----
#
# A servable with ``[options] fork = true`` is started once per node as a
# template: its script runs up to ``serve()`` (imports done, model loaded)
# and then serves fork requests on a Unix socket (``FLOTILLA_TEMPLATE_SOCKET``,
# in the node's private cache directory). Each connection carries one
# request, msgpack of the child's environment (name/value pairs), working
# directory and cores, with three file descriptors attached (its stdin,
# stdout and stderr); the template forks, answers with the child's pid
# (msgpack), and the child goes on
# into the ordinary serve loop with those as its standard streams. The
# template exits after ``FLOTILLA_TEMPLATE_IDLE_S`` seconds without a
# request. A fork copies the process as it is, which is wrong for a model
# holding a GPU context, threads or open connections made before
# ``serve()``: hence opt-in.

_TEMPLATE_SOCKET_ENV = "FLOTILLA_TEMPLATE_SOCKET"
_TEMPLATE_IDLE_ENV = "FLOTILLA_TEMPLATE_IDLE_S"


def _become_child(listener, conn, fds, request):
    """In the forked child: take the slot's streams, environment, working
    directory and cores, then return to serve."""
    listener.close()
    conn.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env, cwd, cpus = request
    os.environ.clear()
    os.environ.update(dict(env))
    os.chdir(cwd)
    if cpus:
        os.sched_setaffinity(0, set(cpus))


def _become_template(path):
    """Serves fork requests on ``path``; returns only in a forked child."""
    idle = float(os.environ.pop(_TEMPLATE_IDLE_ENV, "600"))
    # Children are reaped by the kernel: the worker watches them through
    # their pipes.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fresh = "%s.%d" % (path, os.getpid())
    listener.bind(fresh)
    os.chmod(fresh, 0o600)
    listener.listen(16)
    # In place only once listening, so a connection never finds a socket
    # nobody serves.
    os.rename(fresh, path)
    mine = os.stat(path).st_ino
    listener.settimeout(idle)
    print("template %d ready on %s" % (os.getpid(), path), file=sys.stderr, flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            try:
                if os.stat(path).st_ino == mine:
                    os.unlink(path)
            except OSError:
                pass
            os._exit(0)
        conn.settimeout(10)
        fds = []
        try:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = msgpack.unpackb(message, raw=False)
            if len(fds) != 3:
                raise ValueError("expected 3 descriptors, got %d" % len(fds))
            pid = os.fork()
            if pid == 0:
                _become_child(listener, conn, fds, request)
                return
            conn.sendall(msgpack.packb(pid))
        except Exception as exc:  # a bad request costs that request only
            print("template: request refused: %s" % exc, file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()
