"""Read back what an offline W&B run stored: its name, group, tags, config, history and summary, decoded from its
`.wandb` file, and its tables with their media. W&B ships no reader for that file, but it is a LevelDB-style log
(7-byte header `:W&B`, 0xBEE1, version; then 32 KiB blocks of records: crc32, length, type) of protobuf Records,
and W&B ships the protobuf.

A logged table is stored twice: in the run's files with media cells reduced to their type's name, and as a
`run_table` artifact whose files (the table, its audio) wait in W&B's staging folder until `wandb sync` uploads
them; the dashboard shows the artifact's, so `tables` reads that one."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7  # each record's: crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class Table:
    columns: list[str]
    data: list[list[Any]]
    files: dict[str, Path]  # the artifact's files by their path in it (media/audio/....wav)

    def column(self, name: str) -> list[Any]:
        return [row[self.columns.index(name)] for row in self.data]

    def file(self, cell: dict[str, Any]) -> Path:
        """The file of a media cell ({"_type": "audio-file", "path": ...})."""
        return self.files[cell["path"]]


@dataclass
class OfflineRun:
    dir: Path  # the offline-run-* folder
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[str, dict[str, Path]]] = field(default_factory=list)  # (name, {path: staged file})

    def tables(self, key: str) -> dict[int, Table]:
        """Each logged table `key` by the `step` of its history row (the artifact versions come in log order)."""
        steps = [row["step"] for row in self.history if key in row]
        versions = [files for name, files in self.artifacts if name.endswith(f"-{key}")]
        assert len(steps) == len(versions), (steps, len(versions))
        out = {}
        for step, files in zip(steps, versions):
            table = json.loads(files[f"{key}.table.json"].read_text())
            out[step] = Table(table["columns"], table["data"], files)
        return out


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, payload, records = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk, pos = data[pos + _HEADER:pos + _HEADER + length], pos + _HEADER + length
        if kind in (_FULL, _FIRST):
            payload = chunk
        elif kind in (_MIDDLE, _LAST):
            payload += chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def _put(target: dict[str, Any], item: Any) -> None:
    """Set an update's value under its key, or its nested key (`predictions`, `_type`) as nested dicts."""
    *path, last = [item.key] if item.key else list(item.nested_key)
    for part in path:
        target = target.setdefault(part, {})
    target[last] = json.loads(item.value_json)


def decode(offline_run: Path) -> OfflineRun:
    """The offline run stored in `offline_run` (a `wandb/offline-run-*` folder)."""
    (path,) = offline_run.glob("run-*.wandb")
    run = OfflineRun(offline_run)
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.tags = record.run.display_name, record.run.run_group, list(record.run.tags)
            run.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            run.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(run.summary, item)
        elif kind == "artifact":
            files = {c.path: Path(c.local_path) for c in record.artifact.manifest.contents}
            run.artifacts.append((record.artifact.name, files))
    return run


def decode_only(run_dir: Path) -> OfflineRun:
    """The one offline run under `run_dir/wandb`."""
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    return decode(offline_run)
