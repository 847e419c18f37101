"""model.provision.pull against a real HTTP server on 127.0.0.1: resume, restart, checksum, atomic rename."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from model.provision import pull
from swarm.core.errors import ModelError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes, not a multiple of any chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Server:
    """A real ``http.server`` in a thread. It can ignore ``Range``, or cut the first response short."""

    url: str
    ranges: list[str | None] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    honour_range: bool = True
    drop_first_after: int | None = None


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/models/tiny.gguf":
                self.send_error(404, "Not Found")
                return
            header = self.headers.get("Range")
            state.ranges.append(header)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", header or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            else:
                self.send_response(200)
            body = PAYLOAD[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.drop_first_after is not None and len(state.sent) == 0:
                body = body[: state.drop_first_after]  # promise everything, send part, hang up
                self.close_connection = True
            state.sent.append(len(body))  # before writing: the client may be done before write() returns
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/models/tiny.gguf"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_pull_downloads_and_verifies(server: Server, tmp_path: Path) -> None:
    path = pull(server.url, SHA, tmp_path)
    assert path == tmp_path / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "tiny.gguf.part").exists()


def test_pull_keeps_a_verified_file_without_downloading(server: Server, tmp_path: Path) -> None:
    pull(server.url, SHA, tmp_path)
    pull(server.url, SHA.upper(), tmp_path)
    assert len(server.ranges) == 1


def test_pull_resumes_a_partial_download_with_a_range_request(server: Server, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf.part").write_bytes(PAYLOAD[:300_000])
    path = pull(server.url, SHA, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=300000-"]
    assert server.sent == [len(PAYLOAD) - 300_000]  # only the missing bytes crossed the network


def test_pull_resumes_after_the_connection_drops(server: Server, tmp_path: Path) -> None:
    server.drop_first_after = 100_000
    path = pull(server.url, SHA, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=100000-"]


def test_pull_starts_over_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.honour_range = False
    (tmp_path / "tiny.gguf.part").write_bytes(b"garbage that must not be kept" * 100)
    assert pull(server.url, SHA, tmp_path).read_bytes() == PAYLOAD


def test_pull_of_a_complete_part_file_needs_no_more_bytes(server: Server, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf.part").write_bytes(PAYLOAD)
    assert pull(server.url, SHA, tmp_path).read_bytes() == PAYLOAD
    assert server.sent == []  # the server answered 416: nothing left to send


def test_checksum_mismatch_removes_the_download(server: Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelError) as caught:
        pull(server.url, wrong, tmp_path)
    assert str(caught.value) == (
        f"{server.url}: sha256 of the downloaded {len(PAYLOAD)} bytes is {SHA}, expected {wrong}; "
        "the download was removed; check that the checksum belongs to this URL"
    )
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_another_checksum_is_left_alone(server: Server, tmp_path: Path) -> None:
    mine = tmp_path / "tiny.gguf"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(ModelError, match=r"already exists with sha256 [0-9a-f]{64}, not .*; move it away"):
        pull(server.url, SHA, tmp_path)
    assert mine.read_bytes() == b"the user's own file"
    assert server.ranges == []


def test_http_error_names_the_status(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing\.gguf: HTTP 404 Not Found; check the URL"):
        pull(server.url.replace("tiny", "missing"), SHA, tmp_path)


def test_bad_checksum_argument(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"sha256 must be 64 hex digits, got 'abc'"):
        pull("http://127.0.0.1:9/x.gguf", "abc", tmp_path)


def test_unreachable_server_gives_up_and_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelError, match=r"download failed 2 times in a row \(.*refused.*\); 0 bytes kept in"):
        pull(f"http://127.0.0.1:{port}/m.gguf", SHA, tmp_path, retries=1)
