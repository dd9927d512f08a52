"""A tar file's members from its headers alone, read by ranges, and a tar file cut short found.

`tarfile` reads a shard that ends mid-member or without its end-of-archive blocks as a shorter
shard without a word; this reader refuses it, naming the file. It asks `read_at` for the header
runs only (a member's header, and the data of the small members wanted, such as a `.cls` label),
learning how long a run between two skipped members is so that each run is one read: over the
network a shard's index costs about its headers, not its images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from core.errors import BadDataset

BLOCK = 512
ZEROS = bytes(BLOCK)
LONGEST_RUN = 64 << 10  # a header run longer than this is read in pieces
FILE_TYPES = (b"0", b"\0", b"7")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # where its data starts
    size: int
    data: bytes | None  # its bytes, for the members wanted


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    records, at = {}, 0
    while at < len(data) and data[at : at + 1] != b"\0":
        space = data.index(b" ", at)
        length = int(data[at:space])
        key, _, value = data[space + 1 : at + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "replace")
        at += length
    return records


class _Window:
    """Reads ranges of the file, a whole header run at a time."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int):
        self.read_at, self.size = read_at, size
        self.start, self.buf, self.stride = 0, b"", 3 * BLOCK

    def get(self, offset: int, length: int) -> bytes:
        end = offset + length
        if not (self.start <= offset and end <= self.start + len(self.buf)):
            self.start = offset
            self.buf = self.read_at(offset, min(self.size, max(end, offset + self.stride)))
        return self.buf[offset - self.start : end - self.start]


def members(
    read_at: Callable[[int, int], bytes], size: int, path: str, wanted: Callable[[str], bool]
) -> Iterator[Member]:
    """The regular files of the tar at `path` (`size` bytes; `read_at(start, end)` gives bytes), in
    order, with the data of those `wanted` by name."""

    def cut(where: str) -> BadDataset:
        return BadDataset(
            f"{path}: the shard is cut short ({where}; {size:,} bytes): the copy is incomplete, "
            "fetch it again"
        )

    window = _Window(read_at, size)
    offset = run_start = 0
    extra: dict[str, str] = {}
    last = "its start"
    while True:
        if offset + BLOCK > size:
            raise cut(f"it ends after {last} without tar's end-of-archive blocks")
        header = window.get(offset, BLOCK)
        if header == ZEROS:
            if offset + 2 * BLOCK > size or window.get(offset + BLOCK, BLOCK) != ZEROS:
                raise cut(f"it ends after {last} without tar's end-of-archive blocks")
            return
        if _number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise BadDataset(f"{path}: no tar header at byte {offset:,} (a damaged or non-tar file)")
        kind, length = header[156:157], _number(header[124:136])
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        data_at = offset + BLOCK
        if kind in (b"x", b"L"):  # about the next member: its pax records or GNU long name
            if data_at + length > size:
                raise cut(f"it ends inside the header of the member after {last}")
            data = window.get(data_at, length)
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            extra |= _pax(data) if kind == b"x" else {"path": long_name}
        else:
            name, length = extra.get("path", name), int(extra.get("size", length))
            extra = {}
            if data_at + length > size:
                raise cut(f"it ends inside member {name!r}")
            if kind in FILE_TYPES:
                keep = wanted(name)
                yield Member(name, data_at, length, window.get(data_at, length) if keep else None)
                if not keep and data_at + length > window.start + len(window.buf):
                    window.stride = min(LONGEST_RUN, max(window.stride, data_at - run_start))
                    run_start = data_at + -(-length // BLOCK) * BLOCK
            last = f"member {name!r}"
        offset = data_at + -(-length // BLOCK) * BLOCK
