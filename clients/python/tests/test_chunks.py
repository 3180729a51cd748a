"""How ``map`` cuts its inputs into requests: in order, within the count
and within the daemon's message limit (no daemon needed), and through a
daemon whose limit the client believes to be small."""

from flotilla import mapping, messages
from flotilla.payload import encode_input


def frame_of(chunk):
    return len(mapping.submit_frame(chunk))


def test_chunks_keep_the_order_and_stay_within_the_budget():
    inputs = [b"x" * (20_000 + i) for i in range(10)]
    budget = mapping.chunk_budget(65_536)
    cut = list(mapping.chunks(inputs, "echo", b"", 1000, budget))
    assert len(cut) > 1
    assert [r[1] for chunk in cut for r in chunk] == [encode_input(x) for x in inputs]
    assert all(frame_of(chunk) <= 65_536 for chunk in cut)


def test_the_budget_is_the_smaller_of_the_chunk_cap_and_the_limit():
    assert mapping.chunk_budget(messages.DEFAULT_MAX_FRAME_BYTES) == mapping.MAX_CHUNK_BYTES
    assert mapping.chunk_budget(65_536) < 65_536
    assert mapping.chunk_budget(10) == 1


def test_an_input_is_never_added_to_a_chunk_it_would_overflow():
    # 7 MiB then 6 MiB: together over 8 MiB, so the second starts a chunk.
    big = [b"a" * (7 << 20), b"b" * (6 << 20), b"c" * 10]
    cut = list(mapping.chunks(big, "echo", b"", 1000))
    assert [len(chunk) for chunk in cut] == [1, 2]
    assert all(frame_of(chunk) <= mapping.MAX_CHUNK_BYTES + 1024 for chunk in cut)


def test_a_count_of_one_and_an_oversized_input_each_make_their_own_chunk():
    cut = list(mapping.chunks([1, 2, 3], "echo", b"", 1))
    assert [len(chunk) for chunk in cut] == [1, 1, 1]
    cut = list(mapping.chunks([b"s", b"L" * 5000, b"s"], "echo", b"", 1000, 1000))
    assert [len(chunk) for chunk in cut] == [1, 1, 1]


def test_map_splits_under_a_small_message_limit(client):
    # The connection refuses any frame over its limit before sending it:
    # unsplit, these 10 inputs (300 kB) would be one 300 kB request.
    client._core._connection.max_frame_bytes = 100_000
    inputs = [b"z" * (30_000 + i) for i in range(10)]
    assert list(client.map("echo", inputs)) == inputs
