"""story=file: a user's own story text. It has no ground-truth facts, so pair it with qa=file or an LLM qa."""

from __future__ import annotations

from pathlib import Path

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.world.schema import Story


class FileStory:
    """Reads `path` as UTF-8 text; every problem names the file so the user can fix it without a traceback."""

    def __init__(self, path: str) -> None:
        self.path = path

    def generate(self) -> Story:
        where = f"story.path={self.path}"
        path = Path(self.path)
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "not found"
            raise UserError(f"{where}: {reason}", fix="set story.path to an existing UTF-8 text file")
        try:
            # utf-8-sig drops a byte-order mark that some editors prepend; it would otherwise be spoken.
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{where}: not UTF-8 text (undecodable byte at offset {e.start})",
                fix="save the story as plain UTF-8 text",
            ) from None
        if not text.strip():
            raise UserError(f"{where}: the file is empty", fix="put the story's prose in the file")
        return Story(text=text, world=None)


SCHEMAS = {("story", "file_schema"): init_schema(FileStory)}
