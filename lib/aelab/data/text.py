"""English text corpora: Jane Austen's six novels (Debian r-cran-janeaustenr), or the Python docs' topics."""

from __future__ import annotations

import bz2
import json
import lzma
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from aelab._env import data_dir

from ._common import (
    CorruptDataError,
    DataUnavailableError,
    atomic_open,
    cache_dir,
    corrupt,
    debian_package,
    prepare_hint,
    register_preparer,
    sha256,
)

AUSTEN_DEB = "r-cran-janeaustenr"
# janeaustenr's object names and the titles its austen_books() gives them, in publication order.
AUSTEN_BOOKS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
R_LIBRARIES = (Path("/usr/lib/R/site-library"), Path("/usr/local/lib/R/site-library"), Path("/usr/lib/R/library"))
_RDB = Path("janeaustenr") / "data" / "Rdata.rdb"
_GET_AUSTEN = (
    f"run {prepare_hint('austen')} (it fetches the Debian package {AUSTEN_DEB} with `apt-get download`, "
    f"no root needed) or `sudo apt-get install {AUSTEN_DEB}`"
)


class Corpus(NamedTuple):
    """A list of documents with their titles."""

    name: str
    documents: list[str]
    titles: list[str]


def text_corpus(name: str = "austen") -> Corpus:
    """An English corpus, one document per book (``austen``) or per help topic (``pydoc``).

    ``austen``: the six novels of janeaustenr (public domain, about 718k words), from the cache or a
    system install of the Debian package; when neither is there it warns and returns ``pydoc``.
    ``pydoc``: the standard library's ``pydoc_data.topics`` (about 65k words), always present.
    """
    if name == "pydoc":
        return _pydoc()
    if name != "austen":
        raise ValueError(f"name must be 'austen' or 'pydoc', got {name!r}")
    try:
        return _austen()
    except DataUnavailableError as e:
        warnings.warn(f"{e}; using the 'pydoc' corpus instead", stacklevel=2)
        return _pydoc()


def _pydoc() -> Corpus:
    from pydoc_data.topics import topics

    titles = sorted(topics)
    return Corpus("pydoc", [topics[t] for t in titles], titles)


def _austen_cache() -> Path:
    return data_dir() / "austen"


def _austen() -> Corpus:
    folder = _austen_cache()
    if not (folder / "manifest.json").exists():
        rdb = _system_rdb()
        if rdb is None:
            raise DataUnavailableError(
                f"Jane Austen's novels are not cached in {folder} and {AUSTEN_DEB} is not installed; {_GET_AUSTEN}"
            )
        _write_cache(read_austen_rdb(rdb), folder)
    return _read_cache(folder)


def _read_cache(folder: Path) -> Corpus:
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise corrupt(manifest_path, f"{type(e).__name__}: {e}", "austen") from e
    documents = []
    for key in AUSTEN_BOOKS:
        path = folder / f"{key}.txt"
        try:
            data = path.read_bytes()
        except OSError as e:
            raise corrupt(path, f"{type(e).__name__}: {e}", "austen") from e
        if sha256(data) != manifest.get(key):
            raise corrupt(path, "sha256 differs from manifest.json", "austen")
        documents.append(data.decode("utf-8"))
    return Corpus("austen", documents, list(AUSTEN_BOOKS.values()))


def _write_cache(books: dict[str, str], folder: Path) -> None:
    """One UTF-8 file per book, then ``manifest.json`` (their sha256) last, so a partial cache is never read."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for key in AUSTEN_BOOKS:
        data = books[key].encode("utf-8")
        with atomic_open(folder / f"{key}.txt") as f:
            f.write(data)
        manifest[key] = sha256(data)
    with atomic_open(folder / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)


def _system_rdb() -> Path | None:
    """janeaustenr's data file in a system R library, if the Debian package is installed."""
    for lib in R_LIBRARIES:
        if (lib / _RDB).exists():
            return lib / _RDB
    return None


def _rdata() -> Any:
    try:
        import rdata.conversion
        import rdata.parser
    except ImportError as e:
        raise DataUnavailableError("reading janeaustenr's R data needs the rdata package: pip install rdata") from e
    return rdata


def _unserialize(raw: bytes) -> Any:
    """An R serialization (RDS stream, possibly gzipped) as Python objects, via ``rdata``."""
    rdata = _rdata()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unknown file type")  # a bare stream is RDS, as assumed
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def _decompress(record: bytes, compressed: int) -> bytes:
    """One lazy-load record: 4-byte big-endian length, then (R >= 2.10 types 2/3) a type byte, then the stream."""
    (length,) = struct.unpack(">I", record[:4])
    if compressed == 1:
        body = zlib.decompress(record[4:])
    else:
        kind, stream = record[4:5], record[5:]
        codecs = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        if kind not in codecs:
            raise ValueError(f"unknown lazy-load compression type {kind!r}")
        body = codecs[kind](stream)
    if len(body) != length:
        raise ValueError(f"record decompressed to {len(body)} bytes, expected {length}")
    return body


def read_lazyload_db(rdb: Path) -> dict[str, Any]:
    """Every object of an R lazy-load database (``x.rdb`` + ``x.rdx``), as converted by ``rdata``.

    The ``.rdx`` is a serialized list: ``variables`` maps each name to (offset, length) in the ``.rdb``,
    ``compressed`` says how each record is compressed.
    """
    rdb = Path(rdb)
    rdx = rdb.with_suffix(".rdx")
    try:
        index = _unserialize(rdx.read_bytes())
        compressed = int(index["compressed"][0])
        blob = rdb.read_bytes()
        out = {}
        for key, (offset, length) in index["variables"].items():
            out[str(key)] = _unserialize(_decompress(blob[int(offset) : int(offset) + int(length)], compressed))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise CorruptDataError(
            f"{rdb} (with {rdx.name}) is not a readable R lazy-load database ({type(e).__name__}: {e})"
        ) from e
    return out


def read_austen_rdb(rdb: Path) -> dict[str, str]:
    """The six novels from janeaustenr's ``data/Rdata.rdb``: {object name: text with one line per source line}."""
    objects = read_lazyload_db(rdb)
    missing = [k for k in AUSTEN_BOOKS if k not in objects]
    if missing:
        raise CorruptDataError(f"{rdb} lacks the novels {missing}")
    books = {k: "\n".join("" if line is None else str(line) for line in objects[k]) for k in AUSTEN_BOOKS}
    short = [k for k, text in books.items() if len(text.split()) < 50_000]
    if short:
        raise CorruptDataError(f"{rdb} holds implausibly short novels {short}")
    return books


@register_preparer("austen")
def prepare_austen() -> str:
    """Cache Jane Austen's novels from an installed janeaustenr, or from ``apt-get download`` of it."""
    folder = _austen_cache()
    if (folder / "manifest.json").exists():
        _read_cache(folder)
        return f"austen: already cached in {folder}"
    start = time.perf_counter()
    rdb = _system_rdb()
    if rdb is not None:
        books, origin = read_austen_rdb(rdb), f"the installed {AUSTEN_DEB} ({rdb})"
    else:
        with debian_package(AUSTEN_DEB) as root:
            found = sorted(root.rglob(str(_RDB)))
            if not found:
                raise DataUnavailableError(f"the package {AUSTEN_DEB} has no {_RDB}")
            books, origin = read_austen_rdb(found[0]), f"the Debian package {AUSTEN_DEB}"
    cache_dir("austen")
    _write_cache(books, folder)
    words = sum(len(t.split()) for t in books.values())
    return f"austen: cached 6 novels ({words} words) from {origin} in {folder} ({time.perf_counter() - start:.1f} s)"
