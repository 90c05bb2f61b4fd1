"""Splitting remote output into lines without losing or corrupting anything."""

from deploy_runs.remote import MAX_LINE_BYTES, LinePart, LineSplitter, clip_line


def joined(pieces):
    """Lines, with the pieces of a long line joined (as readers of the log do)."""
    lines, held = [], []
    for piece in pieces:
        if isinstance(piece, LinePart):
            held.append(piece)
        else:
            lines.append("".join(held) + piece)
            held = []
    assert not held, "a long line was not ended"
    return lines


def feed_all(chunks, splitter=None):
    splitter = splitter or LineSplitter()
    pieces = []
    for chunk in chunks:
        pieces += splitter.feed(chunk)
    return joined(pieces + splitter.close())


def test_lines_split_on_newline_crlf_and_bare_carriage_return():
    assert feed_all([b"a\nb\r\nc\rd"]) == ["a", "b", "c", "d"]


def test_crlf_split_across_chunks_is_one_line_break():
    assert feed_all([b"a\r", b"\nb"]) == ["a", "b"]
    assert feed_all([b"a\r", b"b\r", b"\r\n"]) == ["a", "b", ""]


def test_partial_line_waits_for_the_rest():
    splitter = LineSplitter()
    assert splitter.feed(b"hel") == []
    assert splitter.feed(b"lo\nwor") == ["hello"]
    assert splitter.close() == ["wor"]


def test_invalid_utf8_is_kept_visible_not_dropped():
    assert feed_all([b"ok \xff\xfe end\n"]) == ["ok \\xff\\xfe end"]


def test_utf8_character_split_across_chunks_is_intact():
    data = "héllo ✔\n".encode()
    assert feed_all([data[:2], data[2:8], data[8:]]) == ["héllo ✔"]


def test_one_megabyte_line_arrives_whole():
    line = b"x" * 1_000_000
    chunks = [line[i:i + 65536] for i in range(0, len(line), 65536)] + [b"\n"]
    assert feed_all(chunks) == ["x" * 1_000_000]


def test_a_long_line_is_handed_on_in_pieces_as_it_arrives():
    splitter = LineSplitter(max_line=10)
    first = splitter.feed(b"a" * 25)
    assert first == ["a" * 10, "a" * 10] and all(isinstance(p, LinePart) for p in first)
    [end] = splitter.feed(b"bb\nc")
    assert end == "aaaaabb" and not isinstance(end, LinePart)
    assert splitter.close() == ["c"]


def test_a_long_line_ending_at_the_end_of_the_stream_is_ended():
    splitter = LineSplitter(max_line=4)
    assert joined(splitter.feed(b"abcdefgh") + splitter.close()) == ["abcdefgh"]


def test_pieces_never_split_a_utf8_character():
    text = "é" * 50 + "\n"
    for size in range(4, 12):
        pieces = LineSplitter(max_line=size).feed(text.encode())
        assert "".join(pieces) == "é" * 50, size
        assert not any("\\x" in p for p in pieces), size


def test_a_newline_free_stream_is_held_in_bounded_memory():
    splitter = LineSplitter()
    chunk = b"y" * 65536
    handed_on = 0
    for _ in range(200):  # 13 MB
        handed_on += sum(len(p) for p in splitter.feed(chunk))
        assert len(splitter._buffer) <= MAX_LINE_BYTES
    assert handed_on + len(splitter._buffer) == 200 * 65536


def test_a_tail_line_keeps_its_head_and_end():
    line = "head " + "x" * 10_000 + " no space left on device"
    clipped = clip_line(line, 200)
    assert clipped.startswith("head ") and clipped.endswith("no space left on device")
    assert "characters" in clipped and len(clipped) < 260
    assert clip_line("short", 200) == "short"
    assert clip_line(LinePart("z" * 500), 100).endswith("[... line goes on]")
