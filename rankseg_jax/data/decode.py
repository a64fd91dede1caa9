"""The one image decoder: training sources, data preparation, evaluation and predict use it.

`decode_image(bytes, where)` -> uint8 [H, W, 3] RGB, or `BadExampleError` naming `where`.

Pixels come from OpenCV's `cv2.imdecode(..., IMREAD_COLOR)`, as mmseg 0.17's
`LoadImageFromFile` (mmcv `imfrombytes`, flag 'color', cv2 backend) decodes them, then BGR ->
RGB. The verdict on a file is the same on every path:

* **EXIF orientation is applied.** `IMREAD_COLOR` honours the EXIF orientation tag (OpenCV
  >= 4.4 applies it in `imdecode` too), and so does mmcv's 'color' flag on its Pillow backend
  (`ImageOps.exif_transpose`); detectron2's `read_image` (Mask2Former) applies it as well. A
  phone photo taken upright is therefore decoded upright. Label files are never rotated:
  mmseg reads them with Pillow, flag 'unchanged', which ignores EXIF (`sources.py`).
* **Truncated files are refused.** The JPEG marker structure is walked to the end-of-image
  marker that follows the last scan (an EXIF thumbnail's own marker, inside its APP1 segment,
  does not count); a PNG's chunks are walked to IEND. A file cut before that is refused.
* **Bytes after the end of the image are accepted**, however many: phones append metadata
  and preview images after a JPEG's end marker (Samsung/Google "motion photo" trailers, MPF).
  Decoders stop at the end marker, so they never see them.
* **Corrupt JPEG scan data is refused.** libjpeg decodes damaged entropy-coded data with a
  warning ("Corrupt JPEG data: ...", "Premature end of JPEG file") and fills the damaged part
  with grey; cv2 returns that image and libjpeg only prints the warning to the C stderr. We
  capture that stream around the decode (file descriptor 2, under a process-wide lock, so
  JPEG decodes of one process run one at a time; anything else written there meanwhile is
  passed on) and refuse the file with libjpeg's message. Training then applies
  `data.bad_example_policy` ('fail': the error names the file; 'skip': counted), and
  `data.prepare` stops naming the file: one decode path, one verdict.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import cv2
import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8"

# libjpeg warnings that mean damaged image data (libjpeg's jerror.h JWRN_* texts). Others
# (e.g. "unknown JFIF revision", a bad ICC profile marker) leave the pixels intact.
_CORRUPT_PREFIXES = ("Corrupt JPEG data", "Premature end of JPEG file",
                     "Inconsistent progression sequence")
_BENIGN_CORRUPT = ("bad ICC marker",)


class BadExampleError(ValueError):
    """An image/label pair that cannot be used; the message names the file."""


# --------------------------------------------------------------------------- structure


def _scan_end(buf: np.ndarray, start: int) -> int:
    """Index of the first marker after entropy-coded data starting at `start`, or len(buf).

    Inside scan data 0xFF is followed by 0x00 (byte stuffing), RST0..7 (0xD0..0xD7) or more
    0xFF fill bytes; any other byte after 0xFF starts a marker.
    """
    ff = np.flatnonzero(buf[start:-1] == 0xFF) + start
    nxt = buf[ff + 1]
    marker = (nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))
    hits = ff[marker]
    return int(hits[0]) if len(hits) else len(buf)


def jpeg_end(data: bytes) -> int | None:
    """Offset just past the JPEG's end-of-image marker, or None if the file ends first.

    Walks the marker segments from SOI by their lengths (so markers inside APPn payloads, e.g.
    an EXIF thumbnail, are skipped) and each scan's entropy-coded data to the next marker.
    """
    buf = np.frombuffer(data, np.uint8)
    n, pos = len(data), 2
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: damaged structure
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:
            return pos + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        elif pos + 4 > n:
            return None
        else:
            seg_end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            pos = _scan_end(buf, seg_end) if marker == 0xDA else seg_end
    return None


def png_end(data: bytes) -> int | None:
    """Offset just past the PNG's IEND chunk, or None if the file ends first."""
    n, pos = len(data), len(PNG_MAGIC)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return pos if pos <= n else None
    return None


def check_complete(data: bytes, where: str) -> None:
    """Raises BadExampleError naming `where` if a JPEG/PNG ends before its end marker.

    Other formats are left to their decoder. Bytes after the end marker are allowed.
    """
    if data.startswith(JPEG_MAGIC) and jpeg_end(data) is None:
        raise BadExampleError(f"{where}: truncated or damaged JPEG (no end-of-image marker "
                              "after the image data)")
    if data.startswith(PNG_MAGIC) and png_end(data) is None:
        raise BadExampleError(f"{where}: truncated PNG (no IEND chunk)")


# --------------------------------------------------------------------------- libjpeg warnings


class _StderrCapture:
    """Captures what C code writes to file descriptor 2 during a call (one call at a time).

    libjpeg's default error manager, which cv2 keeps, prints warnings there; nothing else
    reports them. A per-process temporary file receives fd 2 while the lock is held.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._file = None
        self._pid = None
        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self):
        # A lock held by another thread at fork() would stay held forever in the child.
        self._lock = threading.Lock()
        self._file, self._pid = None, None

    def call(self, fn, *args):
        """Returns (fn(*args), text written to fd 2 meanwhile)."""
        with self._lock:
            if self._pid != os.getpid():
                self._file, self._pid = tempfile.TemporaryFile(), os.getpid()
            f = self._file
            f.seek(0)
            f.truncate()
            sys.stderr.flush()  # Python's own buffered text goes where it was meant to go
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all (a detached process): nothing to capture
                return fn(*args), ""
            try:
                os.dup2(f.fileno(), 2)
                try:
                    result = fn(*args)
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            f.seek(0)
            return result, f.read().decode("utf-8", "replace")


_CAPTURE = _StderrCapture()


def _corruption(text: str) -> str:
    """Splits captured stderr text: returns libjpeg's data-corruption warnings (joined) and
    writes every other line back to stderr."""
    bad, other = [], []
    for line in text.splitlines():
        if line.startswith(_CORRUPT_PREFIXES) and not any(b in line for b in _BENIGN_CORRUPT):
            bad.append(line.strip())
        elif line:
            other.append(line)
    if other:
        os.write(2, ("\n".join(other) + "\n").encode())
    return "; ".join(bad)


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decodes image bytes (any format OpenCV reads) as mmcv's 'color' flag does.

    Takes the file bytes and a name for messages; returns uint8 [H, W, 3] RGB, EXIF
    orientation applied. Raises BadExampleError naming `where` for a truncated, corrupt or
    undecodable file (module doc).
    """
    check_complete(data, where)
    buf = np.frombuffer(data, np.uint8)
    if data.startswith(JPEG_MAGIC):
        bgr, text = _CAPTURE.call(cv2.imdecode, buf, cv2.IMREAD_COLOR)
        corrupt = _corruption(text)
        if corrupt:
            raise BadExampleError(f"{where}: corrupt JPEG data (libjpeg: {corrupt})")
    else:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadExampleError(f"{where}: not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # same bytes as [..., ::-1], 20x faster


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Reads and decodes an image file with `decode_image`; returns uint8 [H, W, 3] RGB.

    Raises BadExampleError (a ValueError) naming the path.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadExampleError(f"{path}: cannot read ({e})") from e
    return decode_image(data, str(path))
