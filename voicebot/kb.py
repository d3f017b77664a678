"""The knowledge base: a file the user owns, JSON or CSV, loaded into `KbEntry` records.

Accepted formats (chosen by the file's extension):
- `.json`: a list of `{"id", "question", "answer"}` objects; an optional `"alt_questions"` list of strings gives
  other ways callers ask the same thing. Other keys are ignored, so a file may carry its own bookkeeping.
- `.csv`: a header row `id,question,answer` (any order, any case; extra columns are ignored), one entry a row.

The file is written by people, often in a spreadsheet, so every problem is a `KbError` that names the file,
the CSV line or JSON entry, and the field at fault, and says how to fix it: a bad entry must stop start-up,
not surface as a wrong answer read to a caller.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("id", "question", "answer")
# The demo knowledge base (a fictional online store), used when neither --kb nor dialog.kb_path names one.
SAMPLE_KB = Path(__file__).resolve().parent.parent / "samples" / "kb.json"
FORMATS_HINT = (
    'use a .json file (a list of {"id", "question", "answer"} objects) or a .csv file with the header '
    "id,question,answer"
)


class KbError(ValueError):
    """The knowledge base file is unusable; the message names the file, the line or entry, and the field."""


@dataclass(frozen=True)
class KbEntry:
    id: str
    question: str
    answer: str
    alt_questions: tuple[str, ...] = ()

    @property
    def questions(self) -> tuple[str, ...]:
        """The main question first, then the alternatives: every text the index matches callers against."""
        return (self.question, *self.alt_questions)


def load_kb(path: Path) -> list[KbEntry]:
    """Read and validate the knowledge base at `path` (`.json` or `.csv`)."""
    return parse_kb(read_kb_bytes(path), path)


def read_kb_bytes(path: Path) -> bytes:
    """The file's raw bytes (the index hashes exactly what `parse_kb` parses), or a `KbError` saying why not."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".csv"):
        raise KbError(f"{path}: unsupported knowledge base format {path.suffix or '(no extension)'!r}; {FORMATS_HINT}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KbError(
            f"knowledge base file {path} does not exist; pass an existing file with --kb or fix dialog.kb_path"
        ) from None
    except IsADirectoryError:
        raise KbError(f"knowledge base {path} is a folder; point --kb or dialog.kb_path at a file") from None
    except OSError as exc:
        raise KbError(f"knowledge base file {path} cannot be read: {exc.strerror or exc}") from exc


def parse_kb(data: bytes, path: Path) -> list[KbEntry]:
    """Parse a knowledge base from `data`, the contents of `path` (whose extension picks the format)."""
    path = Path(path)
    try:
        text = data.decode("utf-8-sig")  # Excel and Notepad write a byte-order mark; accept it.
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KbError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02x}); the file is probably in "
            f"another encoding (Windows-1252, Latin-1, UTF-16): re-save it as UTF-8 (in Excel: Save As, "
            f"CSV UTF-8)"
        ) from None
    if not text.strip():
        raise KbError(f"{path}: the file is empty; add at least one entry: {FORMATS_HINT}")
    entries = _parse_json(text, path) if path.suffix.lower() == ".json" else _parse_csv(text, path)
    if not entries:
        raise KbError(f"{path}: the knowledge base has no entries; add at least one question and answer")
    return entries


def _parse_json(text: str, path: Path) -> list[KbEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KbError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise KbError(
            f'{path}: expected a JSON list of {{"id", "question", "answer"}} objects, found {_json_type(data)}'
        )
    entries: list[KbEntry] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(data, start=1):
        where = f"{path}: entry {number}"
        if not isinstance(item, dict):
            raise KbError(
                f'{where} is {_json_type(item)}; each entry must be an object with "id", "question", "answer"'
            )
        raw_id = item.get("id")
        if isinstance(raw_id, str) and raw_id.strip():
            where += f" (id {raw_id.strip()!r})"
        values = {}
        for name in FIELDS:
            if name not in item:
                found = ", ".join(map(repr, item)) or "none"
                raise KbError(f'{where}: missing field "{name}" (fields found: {found})')
            value = item[name]
            if not isinstance(value, str):
                raise KbError(f'{where}: field "{name}" must be a string, found {_json_type(value)}')
            values[name] = _required(value, name, where)
        alt = item.get("alt_questions", [])
        if not isinstance(alt, list) or not all(isinstance(q, str) and q.strip() for q in alt):
            raise KbError(f'{where}: field "alt_questions" must be a list of non-empty strings, found {alt!r}')
        entry_id = values["id"]
        if entry_id in seen:
            raise KbError(
                f'{where}: field "id": {entry_id!r} is already used by entry {seen[entry_id]}; ids must be unique'
            )
        seen[entry_id] = number
        entries.append(KbEntry(entry_id, values["question"], values["answer"], tuple(q.strip() for q in alt)))
    return entries


def _parse_csv(text: str, path: Path) -> list[KbEntry]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        names = [name.strip().lower() for name in header]
        missing = [name for name in FIELDS if name not in names]
        if missing:
            hint = (
                "; the file looks separated by semicolons: save it as comma-separated CSV"
                if len(header) == 1 and ";" in header[0]
                else ""
            )
            raise KbError(
                f"{path}: line 1: the header must name the columns id,question,answer; found "
                f"{','.join(header)!r}, missing {', '.join(missing)}{hint}"
            )
        columns = {name: names.index(name) for name in FIELDS}
        entries: list[KbEntry] = []
        seen: dict[str, int] = {}
        start = reader.line_num + 1  # where the next record starts; a quoted field may span several lines
        for row in reader:
            line, start = start, reader.line_num + 1
            where = f"{path}: line {line}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                hint = (
                    "put text that contains a comma in double quotes"
                    if len(row) > len(header)
                    else "fill in every column (an empty one still needs its comma)"
                )
                raise KbError(f"{where} has {len(row)} fields, expected {len(header)} ({','.join(header)}); {hint}")
            raw_id = row[columns["id"]].strip()
            if raw_id:
                where += f" (id {raw_id!r})"
            values = {name: _required(row[index], name, where) for name, index in columns.items()}
            entry_id = values["id"]
            if entry_id in seen:
                raise KbError(
                    f'{where}: field "id": {entry_id!r} is already used on line {seen[entry_id]}; ids must be unique'
                )
            seen[entry_id] = line
            entries.append(KbEntry(entry_id, values["question"], values["answer"]))
    except csv.Error as exc:
        raise KbError(f"{path}: line {reader.line_num}: malformed CSV ({exc}); check the double quotes") from None
    return entries


def _required(value: str, name: str, where: str) -> str:
    value = value.strip()
    if not value:
        what = "an entry without an answer cannot be read to a caller" if name == "answer" else "it is required"
        raise KbError(f'{where}: field "{name}" is empty; {what}: fill it in or remove the entry')
    return value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")
