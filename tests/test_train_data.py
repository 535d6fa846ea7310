"""Text stream, samples, packing and batches of moshi_knowledge.train, on a tiny real moshi LMModel.

`tiny_lm` and `spoken_qa` are shared with the other test_train_* files.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported (docs/moshi.md: inductor costs ~18 s)

import pytest
import sentencepiece as spm
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel

from moshi_knowledge.codes.samples import ConversationCodes, TurnSpan, drop_answer_audio, turn_spans
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.codes.text_stream import speaker_words, text_stream
from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, USER_SPEAKER, SpeakerWord, Turn
from moshi_knowledge.train.attention import segment_attention
from moshi_knowledge.train.batches import TrainStream, collate, eval_batches
from moshi_knowledge.train.config import TrainConfig, TrainSchema
from moshi_knowledge.train.nan_guard import NanGuard
from moshi_knowledge.train.packing import pack_rows

torch.set_num_threads(1)

TEXT_CARD, CARD = 48, 64
PAD, END_PAD = 3, 0


def tiny_lm(seed: int = 0) -> LMModel:
    """The tiny LM of docs/moshi.md that keeps every feature (17 streams, delays, depformer), made smaller still."""
    kwargs = dict(loaders._lm_kwargs)
    kwargs.update(dim=64, num_heads=4, num_layers=2, text_card=TEXT_CARD, card=CARD, context=500, depformer_dim=32,
                  depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=64)
    torch.manual_seed(seed)
    return LMModel(**kwargs)


def spoken_qa(n: int, seed: int = 0, turns: int = 1) -> list[ConversationCodes]:
    """Synthetic conversations: random user codes ask, Moshi answers with 2-4 text tokens and random audio.

    Silence is one fixed code per codebook, as a real codec gives for silence.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        parts, spans, t = [], [], 0
        for k in range(turns):
            q_len, a_len = int(torch.randint(6, 10, (1,), generator=g)), int(torch.randint(5, 8, (1,), generator=g))
            codes = torch.zeros(17, q_len + a_len + 2, dtype=torch.long)
            codes[0] = PAD
            codes[1:9] = 1
            codes[9:17] = 1
            codes[9:17, :q_len] = torch.randint(2, CARD, (8, q_len), generator=g)
            a0 = q_len + 1
            answer = torch.randint(4, TEXT_CARD, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)
            codes[0, a0 - 1] = END_PAD
            codes[0, a0:a0 + len(answer)] = answer
            codes[1:9, a0:a0 + a_len] = torch.randint(2, CARD, (8, a_len), generator=g)
            parts.append(codes)
            spans.append(TurnSpan(f"q{i}-{k}", (t, t + q_len), (t + a0, t + a0 + a_len)))
            t += codes.shape[1]
        out.append(ConversationCodes(f"conv{i}", torch.cat(parts, dim=1), spans))
    return out


@pytest.fixture(scope="module")
def lm() -> LMModel:
    return tiny_lm()


@pytest.fixture(scope="module")
def spec(lm: LMModel) -> StreamSpec:
    return StreamSpec.from_lm(lm)


# ---- text stream ------------------------------------------------------------------------------------------------
WORDS = [
    SpeakerWord("hello", 0.00, 0.30, MOSHI_SPEAKER),  # frame 0
    SpeakerWord("user", 0.10, 0.20, USER_SPEAKER),  # not Moshi's: ignored
    SpeakerWord("big", 0.33, 0.39, MOSHI_SPEAKER),  # 0.33 s * 12.5 = frame 4
    SpeakerWord("world", 0.40, 0.55, MOSHI_SPEAKER),  # frame 5, right after "big"'s token: no end-of-padding
    SpeakerWord("again", 0.60, 0.90, MOSHI_SPEAKER),  # frame 7, while "world" has one token left
    SpeakerWord("zero", 1.00, 1.00, MOSHI_SPEAKER),  # no duration: dropped
]
IDS = {"hello": [10, 11], "big": [12], "world": [13, 14, 15], "again": [16], "zero": [17], "user": [18]}


def test_text_stream_follows_moshi_finetune_conventions() -> None:
    stream = text_stream(WORDS, lambda w: IDS[w], 12, PAD, END_PAD)
    assert stream.tolist() == [10, 11, PAD, END_PAD, 12, 13, 14, 16, PAD, PAD, PAD, PAD]


def test_text_stream_shift_overflow_keeps_every_token() -> None:
    stream = text_stream(WORDS, lambda w: IDS[w], 12, PAD, END_PAD, shift_overflow=True)
    assert stream.tolist() == [10, 11, PAD, END_PAD, 12, 13, 14, 15, 16, PAD, PAD, PAD]


def test_text_stream_with_a_real_sentencepiece_model(tmp_path) -> None:
    text = "\n".join(f"the river {w} flows past the old mill near {v}" for w in ("Arno", "Vela", "Tisk")
                     for v in ("Dorn", "Halm", "Quell")) * 20
    (tmp_path / "corpus.txt").write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tok"), vocab_size=289,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, byte_fallback=True, user_defined_symbols=["\n"],
        minloglevel=2)
    tok = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    alignments = [["the", [0.1, 0.3], "SPEAKER_MAIN"], ["river", [0.4, 0.8], "SPEAKER_MAIN"],
                  ["Vela", [1.0, 1.6], "SPEAKER_MAIN"], ["what", [0.2, 0.5], "SPEAKER_USER"]]
    stream = text_stream(speaker_words(alignments), tok.encode, 30, PAD, END_PAD).tolist()
    words = [t for t in stream if t not in (PAD, END_PAD)]
    assert tok.decode(words) == "the river Vela"
    assert stream[round(0.4 * 12.5) - 1] in (END_PAD,) + tuple(tok.encode("the"))
    assert stream[int(1.0 * 12.5) - 1] == END_PAD and stream[int(1.0 * 12.5)] == tok.encode("Vela")[0]


# ---- samples ------------------------------------------------------------------------------------------------
def test_turn_spans_cover_the_turn_in_frames() -> None:
    spans = turn_spans([Turn("q1", (0.3, 1.0), (1.41, 2.0))], n_frames=20)
    assert spans == [TurnSpan("q1", (3, 13), (17, 20))]  # end clipped to the clip


def test_conversation_codes_save_load_roundtrip(tmp_path) -> None:
    conv = spoken_qa(1, turns=2)[0]
    back = ConversationCodes.load(conv.save(tmp_path / "c.pt"))
    assert back.id == conv.id and back.turns == conv.turns and torch.equal(back.codes, conv.codes)


def test_audio_drop_masks_moshi_audio_of_answers_only() -> None:
    conv = spoken_qa(1, turns=3)[0]
    dropped = drop_answer_audio(conv, 1.0, random.Random(0))
    for turn in conv.turns:
        a0, a1 = turn.answer
        assert (dropped[1:9, a0:a1] == -1).all()
        assert torch.equal(dropped[0], conv.codes[0]) and torch.equal(dropped[9:], conv.codes[9:])
    assert torch.equal(drop_answer_audio(conv, 0.0, random.Random(0)), conv.codes)
    many = spoken_qa(40, turns=5)
    rng = random.Random(3)
    hits = sum(int((drop_answer_audio(c, 0.5, rng)[1] == -1).any(dim=0).sum() > 0) for c in many)
    assert 30 <= hits <= 40  # most conversations lose at least one of their 5 answers at p=0.5
    assert torch.equal(drop_answer_audio(conv, 0.5, random.Random(7)), drop_answer_audio(conv, 0.5, random.Random(7)))


# ---- packing and batches --------------------------------------------------------------------------------------
def test_pack_rows_first_fit_with_gaps_and_no_packing() -> None:
    samples = spoken_qa(5)
    lengths = [s.n_frames for s in samples]
    rows = pack_rows(samples, range(5), seq_frames=40, gap=2, packing=True)
    assert sorted(p.sample for row in rows for p in row) == list(range(5))
    for row in rows:
        end = 0
        for k, p in enumerate(row):
            assert p.offset == (0 if k == 0 else end + 2)
            end = p.offset + lengths[p.sample]
        assert end <= 40
    assert len(rows) < 5
    unpacked = pack_rows(samples, range(5), 40, 2, packing=False)
    assert [[p.sample for p in r] for r in unpacked] == [[i] for i in range(5)]
    with pytest.raises(UserError, match="seq_sec"):
        pack_rows(samples, range(5), seq_frames=10, gap=2, packing=True)


@pytest.mark.parametrize("flex", [False, True], ids=["dense-mask", "flex"])
def test_packed_conversation_gets_the_logits_it_gets_alone(lm: LMModel, spec: StreamSpec, flex: bool) -> None:
    a, b = spoken_qa(2, seed=4)
    off = a.n_frames + spec.gap
    packed = collate([[(a.codes, 0), (b.codes, off)]], spec, 60)
    alone = collate([[(b.codes, 0)]], spec, 60)
    with torch.no_grad(), segment_attention(lm, packed.segments, flex):
        out_p = lm(packed.codes)
    with torch.no_grad():
        out_a = lm(alone.codes)
        out_leak = lm(packed.codes)  # without the segment mask, b would see a
        if flex:  # a row of one conversation: flex's causal block mask is moshi's own causal mask
            with segment_attention(lm, None, flex, alone.codes.shape[-1]):
                assert torch.allclose(lm(alone.codes).text_logits, out_a.text_logits, atol=1e-5)
    n = b.n_frames
    mask = alone.loss_mask[0, :, :n]
    assert torch.equal(packed.loss_mask[0, :, off:off + n], mask)
    text_p, text_a = out_p.text_logits[0, 0, off:off + n], out_a.text_logits[0, 0, :n]
    assert torch.allclose(text_p, text_a, atol=1e-4)
    assert torch.allclose(out_p.logits[0, :, off:off + n][mask[1:]], out_a.logits[0, :, :n][mask[1:]], atol=1e-4)
    assert (out_leak.text_logits[0, 0, off:off + n] - text_a).abs().max() > 1e-2


def test_loss_mask_excludes_padding_gaps_and_the_delayed_tail(spec: StreamSpec) -> None:
    a, b = spoken_qa(2, seed=5)
    off = a.n_frames + spec.gap
    batch = collate([[(a.codes, 0), (b.codes, off)]], spec, 60)
    m = batch.loss_mask[0]
    assert m[0, :a.n_frames].all() and not m[0, a.n_frames:off].any() and not m[0, off + b.n_frames:].any()
    assert m[1, a.n_frames - 1] and not m[2, a.n_frames - 1]  # codebook 0 has delay 0, codebook 1 delay 1
    assert (batch.codes[0, :, a.n_frames:off] == torch.tensor([TEXT_CARD] + [CARD] * 16)[:, None]).all()
    assert (batch.codes[0, :, off + b.n_frames:] == -1).all()
    assert batch.segments[0, :off].eq(0).all() and batch.segments[0, off:].eq(1).all()
    assert batch.useful_frames == a.n_frames + b.n_frames
    assert collate([[(a.codes, 0)]], spec, 60).segments is None


def test_train_stream_is_deterministic_and_resumable(spec: StreamSpec) -> None:
    samples = spoken_qa(7)

    def stream() -> TrainStream:
        return TrainStream(samples, spec, seq_frames=40, packing=True, audio_drop=0.5, seed=1)

    s1 = stream()
    first = [s1.next_rows(3) for _ in range(5)]  # 15 rows: crosses epoch ends
    s2 = stream()
    s2.next_rows(3)
    s2.next_rows(3)
    resumed = stream()
    resumed.position = s2.position
    for rows_a, rows_b in zip(first[2:], [resumed.next_rows(3) for _ in range(3)]):
        assert [[(c.tolist(), o) for c, o in r] for r in rows_a] == [[(c.tolist(), o) for c, o in r] for r in rows_b]
    e0, e1 = s1.epoch_rows(0), stream().epoch_rows(1)
    assert [[c.tolist() for c, _ in r] for r in e0] != [[c.tolist() for c, _ in r] for r in e1]


def test_eval_batches_are_a_fixed_list_of_every_conversation(spec: StreamSpec) -> None:
    samples = spoken_qa(5)
    batches = eval_batches(samples, spec, seq_frames=40, batch_size=2, packing=False)
    assert isinstance(batches, list) and [len(b) for b in batches] == [2, 2, 1]
    assert sum(b.useful_frames for b in batches) == sum(s.n_frames for s in samples)
    again = eval_batches(samples, spec, seq_frames=40, batch_size=2, packing=False)
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(batches, again))
    with pytest.raises(UserError, match="eval set"):
        eval_batches([], spec, 40, 2, True)


# ---- config ---------------------------------------------------------------------------------------------------
def test_schemas_follow_the_runtime_classes() -> None:
    assert issubclass(TrainSchema, TrainConfig)  # one list of training knobs
    with pytest.raises(UserError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="nan_guard.policy"):
        NanGuard(policy="nan")


def test_hydra_composes_train_and_nan_guard_groups() -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from moshi_knowledge import config_schema

    config_schema.register()
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        for policy in ("off", "skip", "rollback", "halt"):
            cfg = compose(config_name="config", overrides=["train=default", f"nan_guard={policy}",
                                                           "train.max_steps=7"])
            guard = instantiate(cfg.nan_guard)
            assert isinstance(guard, NanGuard) and guard.policy == policy
        train_cfg = instantiate(cfg.train)
        assert isinstance(train_cfg, TrainConfig) and train_cfg.max_steps == 7 and train_cfg.betas == (0.9, 0.95)
