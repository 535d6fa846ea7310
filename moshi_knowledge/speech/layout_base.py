"""The layout contract: which lines a layout needs spoken, and how it arranges them into stereo conversations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.schema import Conversation, Line, SpeakerWord, Utterance
from moshi_knowledge.world.schema import Story


class Layout(ABC):
    # recorded in the dataset's meta.json; validation checks the Q/A turns' channels for format.QA_CHANNEL_LAYOUTS
    name: ClassVar[str]
    # Also recorded in meta.json, so that recall lays out its prompts as training turns were laid out:
    lead_sec: float  # silence before a conversation's first turn
    gap_sec: float  # silence between the end of a question's audio and the start of its answer's

    @abstractmethod
    def lines(self, qa: QASet, story: Story | None = None) -> list[Line]:
        """Lines this layout needs beyond `script.question_lines` (which are always spoken); `story` is what the
        narration layouts narrate (the Q/A layouts need only `qa`)."""

    @abstractmethod
    def compose(self, qa: QASet, speech: Mapping[str, Utterance], story: Story | None = None) -> list[Conversation]:
        """Train conversations (the Q/A layouts: every phrasing of every train item; the narration layouts: the
        story told by Moshi), eval ones from the eval items."""


class Aligner(ABC):
    @abstractmethod
    def align(self, conversation: Conversation) -> list[SpeakerWord]:
        """Word spans of both channels, sorted by start, within [0, duration]."""
