"""The catalog through the Python client, with a real published servable: a
warm Python process behind the worker, published with the CLI."""

import textwrap

import pytest
from flotilla import errors

SPEC = """\
name = "pyclient-square"
version = "{version}"
title = "Squares numbers for the Python client tests"
description = "Returns x * x; refuses negative numbers."
license = "Apache-2.0"
model_type = "python-function"
domains = ["testing", "arithmetic"]
files = ["serve.py"]

[[creators]]
name = "Ada Tester"
affiliation = "Test Lab"

[input]
kind = "number"
description = "x"

[output]
kind = "number"

[runtime]
kind = "exec"
command = "python3"
args = ["serve.py"]

[options]
max_batch_size = 64
"""

SERVE = textwrap.dedent(
    """\
    from flotilla_servable import serve


    def square(x, offset=0):
        if x < 0:
            raise ValueError("negative input %s" % x)
        return x * x + offset


    serve(square)
    """
)


@pytest.fixture(scope="module")
def square(daemon, tmp_path_factory):
    """Publishes two versions of ``pyclient-square``; returns its name."""
    for version in ("1.0.0", "1.1.0"):
        directory = tmp_path_factory.mktemp("square-" + version)
        (directory / "servable.toml").write_text(SPEC.format(version=version))
        (directory / "serve.py").write_text(SERVE)
        daemon.cli("servable", "publish", directory)
    return "pyclient-square"


def test_search_finds_by_words_and_filters(client, square):
    hits = client.servables.search("squares")
    assert [h.id for h in hits] == ["pyclient-square@1.1.0"]
    hit = hits[0]
    assert hit.title == "Squares numbers for the Python client tests"
    assert hit.model_type == "python-function"
    assert hit.domains == ["testing", "arithmetic"] and hit.creators == ["Ada Tester"]
    assert hit.score > 0
    assert [h.name for h in client.servables.search(domain="testing")] == [square]
    assert [h.name for h in client.servables.search(author="ada")] == [square]
    assert client.servables.search("squares", model_type="sklearn") == []
    assert square in [s.name for s in client.servables.list()]


def test_show_gives_the_full_record(client, square):
    record = client.servables.show(square)
    assert record.id == "pyclient-square@1.1.0"
    spec = record.spec
    assert spec.description == "Returns x * x; refuses negative numbers."
    assert spec.creators[0].name == "Ada Tester" and spec.creators[0].affiliation == "Test Lab"
    assert spec.input == {"kind": "number", "description": "x"}
    assert spec.runtime["kind"] == "exec" and spec.runtime["args"] == ["serve.py"]
    assert spec.options.max_batch_size == 64
    assert [f.path for f in record.files] == ["serve.py"]
    assert len(record.files[0].blake3) == 64 and record.files[0].size == len(SERVE)
    assert record.published_us > 0
    assert client.servables.show(square + "@1.0.0").spec.version == "1.0.0"
    assert client.servables.versions(square) == ["1.0.0", "1.1.0"]


def test_unknown_servables_and_versions_are_not_found(client, square):
    with pytest.raises(errors.ServableNotFound, match="has no version 9.9.9"):
        client.servables.show(square + "@9.9.9")
    with pytest.raises(errors.ServableNotFound):
        client.servables.versions("no-such-servable")


def test_a_python_servable_runs_and_fails_with_its_own_message(client, square):
    assert client.run(square, 7) == 49
    assert client.run(square + "@1.0.0", 3, params={"offset": 1}) == 10
    assert list(client.map(square, range(100), chunk=16)) == [i * i for i in range(100)]
    with pytest.raises(errors.TaskFailed) as caught:
        client.run(square, -2)
    assert caught.value.reason == "ValueError: negative input -2"
    assert caught.value.servable == "pyclient-square@1.1.0"
