"""Training mechanics for any moshi LMModel: text stream, packing, loss, NaN guard, checkpoints, DDP, the loop.

Importing this package imports moshi: set NO_TORCH_COMPILE=1 before, on CPU (see NOTES.md).
"""

from moshi_knowledge.train.batches import Batch, StreamSpec, TrainStream, eval_batches
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.distributed import init_from_env
from moshi_knowledge.train.loop import evaluate, train
from moshi_knowledge.train.nan_guard import NanGuard
from moshi_knowledge.train.samples import ConversationCodes, TurnSpan, turn_spans
from moshi_knowledge.train.text_stream import speaker_words, text_stream

__all__ = [
    "Batch", "ConversationCodes", "NanGuard", "StreamSpec", "TrainConfig", "TrainStream",
    "TurnSpan", "eval_batches", "evaluate", "init_from_env", "speaker_words", "text_stream",
    "train", "turn_spans",
]
