"""Splitting remote output into lines without losing or corrupting anything."""

from deploy_runs.remote import LineSplitter


def feed_all(chunks):
    splitter = LineSplitter()
    lines = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.close()


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
