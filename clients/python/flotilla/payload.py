"""Servable inputs, parameters and outputs as msgpack bytes.

The daemon moves payloads without reading them; servables receive and return
msgpack. This module turns Python values into those bytes and back, the way
the ``flotilla_servable`` shim does on the servable's side: numpy arrays and
scalars become lists and numbers, bytes stay bytes, tuples become lists.
"""

import msgpack

from .errors import PayloadError
from .ndarray import pack_ndarray

__all__ = ["encode_input", "encode_params", "decode_output", "NO_PARAMS"]

#: The encoding of "no parameters": an empty payload.
NO_PARAMS = b""

_ALLOWED = "None, bool, int, float, str, bytes, lists, tuples, dicts, and numpy arrays or scalars"


def _to_plain(obj):
    """msgpack's fallback: numpy values become plain Python values."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError("a %s is not a msgpack value" % type(obj).__name__)


def _pack(value, what):
    try:
        return msgpack.packb(value, use_bin_type=True, default=_to_plain)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(
            "cannot send %s to Flotilla: %s (allowed: %s)" % (what, exc, _ALLOWED)
        ) from exc


def encode_input(value):
    """The msgpack bytes of a servable input (``None`` is sent as nil).

    A numpy array given as the whole input is written by numpy
    (:func:`flotilla.ndarray.pack_ndarray`): the same nested lists, without
    a Python object per element.
    """
    packed = pack_ndarray(value)
    if packed is not None:
        return packed
    return _pack(value, "this input")


def encode_params(params):
    """The msgpack bytes of a parameters dict; ``None`` or ``{}`` mean none.

    Parameters are keyword arguments of the servable, so they must be a
    mapping from names to values. Requests with equal parameters may be
    batched into one model call.
    """
    if params is None:
        return NO_PARAMS
    if not hasattr(params, "keys"):
        raise PayloadError(
            "params must be a dict of parameter names to values, e.g. "
            "{'top_k': 3}; got a %s" % type(params).__name__
        )
    if len(params) == 0:
        return NO_PARAMS
    for key in params.keys():
        if not isinstance(key, str):
            raise PayloadError(
                "parameter names must be strings; got %r (a %s)" % (key, type(key).__name__)
            )
    return _pack(dict(params), "these params")


def decode_output(data):
    """The Python value of a servable's msgpack output (empty: ``None``)."""
    if not data:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise PayloadError("the daemon sent an output that is not msgpack: %s" % exc) from exc
