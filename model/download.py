"""Download a GGUF over HTTP(S): resumable, checksummed, atomic.

Only the standard library is used (``urllib``), so pulling a model needs nothing beyond swarm's own
dependencies. The bytes go to ``<name>.part`` next to the destination; an interrupted download is resumed
from where it stopped with a ``Range`` request, and the file takes its final name only once its SHA-256
matches.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import structlog

from model.errors import ModelError

log = structlog.get_logger()

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike[str], *, chunk: int = CHUNK) -> str:
    """The hex SHA-256 of a file, read in chunks (constant memory whatever the size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def pull(
    url: str,
    sha256: str,
    to_dir: str | os.PathLike[str] = "model",
    *,
    filename: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` into ``to_dir`` and return the path of the verified file.

    - A file already at the destination with the expected SHA-256 is kept; nothing is downloaded.
    - Bytes are written to ``<name>.part``; if that file exists (an earlier pull was interrupted) the download
      resumes after its last byte with a ``Range`` request. A server that ignores ``Range`` (answers 200)
      makes the download start over. A connection dropped after some progress is resumed at once; after
      ``retries`` attempts in a row that bring nothing (with a growing pause) the pull gives up, keeping the
      ``.part`` file for the next run.
    - Once complete, the SHA-256 is checked. On a mismatch the ``.part`` file is deleted (resuming from wrong
      bytes would only repeat the error) and :class:`ModelError` says both digests.
    - The verified file is renamed into place atomically, so the destination never holds a partial model.

    Raises :class:`ModelError` for a bad checksum argument, an HTTP or network error, or a checksum mismatch.
    """
    expected = sha256.strip().lower()
    if not _HEX64.fullmatch(expected):
        raise ModelError(url, f"sha256 must be 64 hex digits, got {sha256!r}; copy it from the model's download page")
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise ModelError(url, "the URL names no file; pass filename=")
    directory = Path(to_dir)
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / name
    part = directory / (name + ".part")

    if dest.exists():
        actual = file_sha256(dest)
        if actual == expected:
            log.info("model.pull.kept", path=str(dest), sha256=actual)
            return dest
        # Not ours to delete: it may be a file the user put there on purpose.
        raise ModelError(
            str(dest),
            f"already exists with sha256 {actual}, not {expected}; move it away or pull into another directory",
        )

    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch(url, part, timeout=timeout)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise ModelError(url, f"HTTP {exc.code} {exc.reason}; check the URL") from exc
            error: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            error = exc
        got = part.stat().st_size if part.exists() else 0
        if got > before:
            failures = 0  # the connection dropped after some progress: resume at once
        else:
            failures += 1
            if failures > retries:
                raise ModelError(
                    url,
                    f"download failed {failures} times in a row ({error}); {got} bytes kept in {part}, "
                    "run the pull again to resume",
                ) from error
            time.sleep(min(0.5 * 2.0 ** (failures - 1), 8.0))
        log.warning("model.pull.retry", url=url, bytes=got, failures=failures, error=str(error))

    actual = file_sha256(part)
    if actual != expected:
        size = part.stat().st_size
        part.unlink()
        raise ModelError(
            url,
            f"sha256 of the downloaded {size} bytes is {actual}, expected {expected}; "
            "the download was removed; "
            f"check that the checksum belongs to this URL",
        )
    os.replace(part, dest)
    log.info("model.pull.done", path=str(dest), sha256=actual, bytes=dest.stat().st_size)
    return dest


def _fetch(url: str, part: Path, *, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part``; return when the server has sent everything."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "swarm-model-pull"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the URL is the user's)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Nothing left to send: the .part already holds the whole file; the checksum decides.
            log.info("model.pull.part_complete", path=str(part), bytes=have)
            return
        raise
    with response:
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise http.client.HTTPException(f"asked for bytes from {have}, server sent from {start}")
            mode = "ab"
            log.info("model.pull.resume", url=url, offset=have)
        else:
            if have:
                log.info("model.pull.restart", url=url, reason="server ignored the Range header")
            mode = "wb"
            have = 0
        length = response.headers.get("Content-Length")
        expected_total = have + int(length) if length is not None else None
        with open(part, mode) as out:
            while block := response.read(CHUNK):
                out.write(block)
        got = part.stat().st_size
        if expected_total is not None and got < expected_total:
            raise http.client.IncompleteRead(b"", expected_total - got)


def _content_range_start(header: str) -> int | None:
    match = re.match(r"bytes (\d+)-", header)
    return int(match.group(1)) if match else None
