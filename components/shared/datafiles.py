"""Raw tabular data files behind a URI: which files a source names, their format, and reading one into Arrow.

A source is a file, a directory/prefix or a glob on any storage scheme (see ``storage``). Hidden files and markers
such as ``_SUCCESS`` are skipped. The format is ``parquet`` or ``csv``, given or told from the extension.
Bad input raises InputError naming the URI.
"""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.errors import InputError

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_CSV_OPTIONS = pacsv.ConvertOptions(strings_can_be_null=True)


def resolve_files(source: str, fmt: str | None = None, what: str = "data.source") -> list[str]:
    """The data files ``source`` names, in a stable order. With several files and no ``fmt``, only files with a
    known extension count. ``what`` names the setting in the error (e.g. ``current window``)."""
    try:
        uris = storage.list_uris(source)
    except FileNotFoundError:
        uris = []
    uris = [u for u in uris if not os.path.basename(storage.parse(u).key).startswith((".", "_"))]
    if fmt is None:
        uris = [u for u in uris if extension(u) in EXTENSIONS] if len(uris) > 1 else uris
    if not uris:
        raise InputError(f"{what} {source}: no data files found")
    return uris


def extension(uri: str) -> str:
    return os.path.splitext(storage.parse(uri).key)[1].lower()


def format_of(uri: str, fmt: str | None = None, what: str = "data.format") -> str:
    """``fmt`` if given, else the format the extension names."""
    if fmt:
        return fmt
    try:
        return EXTENSIONS[extension(uri)]
    except KeyError:
        raise InputError(f"{uri}: cannot tell the format from the extension; set {what} to parquet or csv") from None


def parse_table(uri: str, data: bytes, fmt: str) -> pa.Table:
    """One file's bytes as an Arrow table (CSV: Arrow's type inference, and its null spellings such as ``n/a``,
    ``NA`` and the empty cell read as null in every column, string columns included, as pandas reads them)."""
    if not data:
        raise InputError(f"{uri}: file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            return pq.read_table(pa.BufferReader(data))
        return pacsv.read_csv(io.BytesIO(data), convert_options=_CSV_OPTIONS)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{uri}: not a readable {fmt.upper()} file ({exc})") from None


def row_label(uri: str, index: int) -> str:
    """``row N`` (1-based), with the CSV line number for CSV files (the header is line 1)."""
    row = f"row {index + 1}"
    return f"{row} (line {index + 2})" if extension(uri) == ".csv" else row
