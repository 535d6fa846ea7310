"""Load a Moshi LM, its Mimi and its tokenizer through moshi's own `CheckpointInfo`, exactly as moshi's tools do.

Three sources share one code path (`load_model`):
- `HubModel` (model=moshiko / moshika): `CheckpointInfo.from_hf_repo(repo)`, downloading as a user with network would.
- `LocalModel` (model=local): `from_hf_repo` with every file given as a local `Path`, which moshi never looks up
  on the Hub.
- `TinyModel` (model=tiny, in tiny.py): builds a checkpoint folder, then loads it as a `LocalModel`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import sentencepiece
import torch
from huggingface_hub.errors import HfHubHTTPError
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.specs.model import HubSpec, LocalSpec

MIMI_CONFIG_KEY = "mimi_config_name"  # config.json's name of a non-default Mimi's config file
LOCAL_FILE = "file://"  # moshi's hf_get reads a name with this prefix as a local path, never from the Hub


def local_file(folder: Path, name: str) -> Path:
    """Where a file named in a checkpoint's config.json lies: an absolute `file://` path, or inside `folder`."""
    return Path(name.removeprefix(LOCAL_FILE)) if name.startswith(LOCAL_FILE) else Path(folder) / name


# config.json keys that name the other files of a checkpoint folder (moshi's `from_hf_repo` reads the same keys)
FILE_KEYS = {
    "moshi_weights": ("moshi_name", loaders.MOSHI_NAME),
    "mimi_weights": ("mimi_name", loaders.MIMI_NAME),
    "tokenizer": ("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" means the GPU when there is one."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:  # torch names no setting: "Expected one of cpu, cuda, ... device type"
        raise UserError(f"model.device={device!r} is not a device",
                        "use auto, cpu, cuda or cuda:N (auto: the GPU when there is one)") from err


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" means bf16 on GPU (Moshi's training dtype) and fp32 on CPU (bf16 matmuls on CPU are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"model.dtype={dtype!r} is not a known dtype", f"use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class LoadedModel:
    """Everything a stage needs of one model; `checkpoint` is moshi's own description of where it came from."""

    lm: LMModel
    mimi: MimiModel
    tokenizer: sentencepiece.SentencePieceProcessor
    checkpoint: loaders.CheckpointInfo

    @property
    def frame_rate(self) -> float:
        return float(self.mimi.frame_rate)

    @property
    def sample_rate(self) -> int:
        return int(self.mimi.sample_rate)

    @property
    def base_config(self) -> dict[str, Any]:
        """The LM config a moshi-format export must extend (legacy repos without config.json use moshi's 7B default)."""
        return dict(self.checkpoint.raw_config or loaders._lm_kwargs)


class ModelSource(Protocol):
    """What `load_model` needs of a `model=` option; `needs_build` tells the model stage whether to build a folder."""

    needs_build: ClassVar[bool]
    device: str
    dtype: str

    def checkpoint_info(self, checkpoint_dir: Path | None) -> loaders.CheckpointInfo: ...


class HubModel(HubSpec):
    """model=moshiko|moshika: HubSpec's settings, loaded through `CheckpointInfo.from_hf_repo`."""

    needs_build: ClassVar[bool] = False

    def checkpoint_info(self, checkpoint_dir: Path | None = None) -> loaders.CheckpointInfo:
        try:
            return loaders.CheckpointInfo.from_hf_repo(self.hf_repo)
        except (OSError, HfHubHTTPError) as err:  # no network, offline mode, missing repo or file
            raise UserError(
                f"model.hf_repo={self.hf_repo}: could not download the weights from the Hugging Face Hub "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                "run where huggingface.co is reachable (or the files are in the HF cache), or download the "
                "checkpoint elsewhere and use model=local with model.moshi_weights, model.mimi_weights, "
                "model.tokenizer and model.config_path pointing at the files",
            ) from err


class LocalModel(LocalSpec):
    """model=local: LocalSpec's settings, each file checked before moshi reads it."""

    needs_build: ClassVar[bool] = False

    @classmethod
    def from_folder(cls, folder: Path, **kwargs: Any) -> "LocalModel":
        """The files of a folder laid out like a Hub repo, named by its config.json (as `from_hf_repo` would)."""
        config_path = Path(folder) / "config.json"
        if not config_path.is_file():
            raise UserError(f"{folder}: no config.json, so this is not a checkpoint folder", "rebuild it (model stage)")
        config = read_json(config_path)
        files = {field: str(Path(folder) / config.get(key, default)) for field, (key, default) in FILE_KEYS.items()}
        mimi_config = config.get(MIMI_CONFIG_KEY)
        return cls(
            **files,
            config_path=str(config_path),
            mimi_config_path=None if mimi_config is None else str(local_file(folder, mimi_config)),
            **kwargs,
        )

    def _existing(self, field: str) -> Path | None:
        value = getattr(self, field)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise UserError(f"model.{field}={value}: file not found", f"point model.{field} at an existing file")
        return path

    def checkpoint_info(self, checkpoint_dir: Path | None = None) -> loaders.CheckpointInfo:
        paths = {f: self._existing(f) for f in ("moshi_weights", "mimi_weights", "tokenizer", "config_path")}
        mimi_config, lora = self._existing("mimi_config_path"), self._existing("lora_weights")
        if paths["config_path"] is None:
            if lora is not None:
                raise UserError(
                    "model.lora_weights needs model.config_path: moshi reads lora_rank and lora_scaling from it",
                    "set model.config_path to the config.json exported beside lora.safetensors",
                )
            return loaders.CheckpointInfo(paths["moshi_weights"], paths["mimi_weights"], paths["tokenizer"])
        named = read_json(paths["config_path"]).get(MIMI_CONFIG_KEY)
        if mimi_config is None and named is not None and not str(named).startswith(LOCAL_FILE):
            # moshi would fetch the named Mimi config from the Hub; a local load must name the file itself
            raise UserError(
                f"model.config_path={paths['config_path']} names a Mimi config (mimi_config_name) but "
                "model.mimi_config_path is not set",
                "set model.mimi_config_path to that file",
            )
        # Path objects (not str) make moshi's hf_get return them untouched: no Hub lookup at all.
        return loaders.CheckpointInfo.from_hf_repo(
            loaders.DEFAULT_REPO, **paths, mimi_config_path=mimi_config, lora_weights=lora
        )


def _check_consistent(info: loaders.CheckpointInfo, text_card: int, card: int, mimi: MimiModel, vocab: int) -> None:
    if vocab != text_card:
        raise UserError(
            f"tokenizer {info.tokenizer} has {vocab} pieces but the LM's text_card is {text_card}",
            "use the tokenizer that was trained with this checkpoint",
        )
    if mimi.cardinality != card:
        raise UserError(
            f"Mimi {info.mimi_weights} has {mimi.cardinality} bins per codebook but the LM's card is {card}",
            "use the Mimi weights and config that belong to this checkpoint",
        )


def load_model(
    source: ModelSource,
    checkpoint_dir: Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load LM, Mimi and tokenizer; `checkpoint_dir` is the model stage's built folder (tiny only).

    `device`/`dtype` override the source's own settings ("auto": GPU + bf16 when available, else CPU + fp32).
    """
    info = source.checkpoint_info(checkpoint_dir)
    dev = resolve_device(device if device is not None else source.device)
    dt = resolve_dtype(dtype if dtype is not None else source.dtype, dev)
    lm = info.get_moshi(device=dev, dtype=dt)
    mimi = info.get_mimi(device=dev)
    tokenizer = info.get_text_tokenizer()
    _check_consistent(info, lm.text_card, lm.card, mimi, tokenizer.vocab_size())
    return LoadedModel(lm=lm, mimi=mimi, tokenizer=tokenizer, checkpoint=info)


@dataclass
class LoadedCodec:
    """The parts of a checkpoint that turn audio and words into codes, without the LM (15 GB at full size)."""

    mimi: MimiModel
    tokenizer: sentencepiece.SentencePieceProcessor
    text_padding_id: int
    end_of_padding_id: int


def _lm_setting(config: dict[str, Any], name: str) -> Any:
    """An LMModel constructor argument as the checkpoint's LM would get it: its config's value, else the default."""
    return config.get(name, inspect.signature(LMModel.__init__).parameters[name].default)


def load_codec(source: ModelSource, checkpoint_dir: Path | None = None,
               device: str | torch.device | None = None) -> LoadedCodec:
    """Mimi, the tokenizer and the text stream's padding ids, read from the checkpoint's LM config."""
    info = source.checkpoint_info(checkpoint_dir)
    mimi = info.get_mimi(device=resolve_device(device if device is not None else source.device))
    tokenizer = info.get_text_tokenizer()
    config = info.lm_config or loaders._lm_kwargs  # legacy repos without config.json: moshi's 7B config
    _check_consistent(info, _lm_setting(config, "text_card"), _lm_setting(config, "card"), mimi,
                      tokenizer.vocab_size())
    return LoadedCodec(mimi, tokenizer, int(_lm_setting(config, "existing_text_padding_id")),
                       int(_lm_setting(config, "existing_text_end_padding_id")))
