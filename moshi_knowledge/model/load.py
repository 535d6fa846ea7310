"""Load a Moshi LM, its Mimi and its tokenizer through moshi's own `CheckpointInfo`, exactly as moshi's tools do.

Three sources share one code path (`load_model`):
- `HubModel` (model=moshiko / moshika): `CheckpointInfo.from_hf_repo(repo)`, downloading as a user with network would.
- `LocalModel` (model=local): `from_hf_repo` with every file given as a local `Path`, which moshi never looks up
  on the Hub.
- `TinyModel` (model=tiny, in tiny.py): builds a checkpoint folder, then loads it as a `LocalModel`.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import sentencepiece
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from safetensors import SafetensorError

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.specs.model import HubSpec, LocalSpec

MIMI_CONFIG_KEY = "mimi_config_name"  # config.json's name of a non-default Mimi's config file
LOCAL_FILE = "file://"  # moshi's hf_get reads a name with this prefix as a local path, never from the Hub
MIMI_CONFIG_FILE = "mimi_config.json"  # an export's copy of its base's Mimi config, beside its config.json


def local_file(folder: Path, name: str) -> Path:
    """Where a file named in a checkpoint's config.json lies: an absolute `file://` path, or inside `folder`."""
    return Path(name.removeprefix(LOCAL_FILE)) if name.startswith(LOCAL_FILE) else Path(folder) / name


def local_file_name(path: Path) -> str:
    """How a config.json names a file for `local_file` and moshi to find on disk: by absolute `file://` path, the one
    form moshi resolves locally (a bare name it fetches from the Hub). Moving the file breaks it: `export` re-points."""
    return LOCAL_FILE + str(Path(path).resolve())


# config.json keys that name the other files of a checkpoint folder (moshi's `from_hf_repo` reads the same keys)
FILE_KEYS = {
    "moshi_weights": ("moshi_name", loaders.MOSHI_NAME),
    "mimi_weights": ("mimi_name", loaders.MIMI_NAME),
    "tokenizer": ("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
}

LOCAL_FILES = ("moshi_weights", "mimi_weights", "tokenizer", "config_path", "mimi_config_path", "lora_weights")
_REPO_LAYOUT = f"{loaders.MOSHI_NAME}, {loaders.MIMI_NAME}, {loaders.TEXT_TOKENIZER_NAME}, optional config.json"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T = TypeVar("T")


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

    def check_files(self) -> None:
        """Preflight: the repo's files are in the Hugging Face cache and readable, checked offline, so that a run
        without them stops before its data stages rather than at the model stage. Nothing is downloaded."""
        config = try_to_load_from_cache(self.hf_repo, "config.json")  # optional: legacy repos have none
        names = read_json(config) if isinstance(config, str) else {}
        for field, (key, default) in FILE_KEYS.items():
            name = names.get(key, default)
            cached = try_to_load_from_cache(self.hf_repo, name)
            if not isinstance(cached, str):
                raise UserError(
                    f"model.hf_repo={self.hf_repo}: {name} (the {field.replace('_', ' ')}) is not in the Hugging "
                    f"Face cache {hf_constants.HF_HUB_CACHE}",
                    f"download the repo once where huggingface.co is reachable: hf download {self.hf_repo} (set "
                    "HF_HOME or HF_HUB_CACHE as the run will see it), or copy it to a folder and run with "
                    "model=local model.dir=PATH",
                )
            _readable(Path(cached), f"model.hf_repo={self.hf_repo}: {cached}",
                      f"download it again: hf download {self.hf_repo} {name} --force-download")

    def checkpoint_info(self, checkpoint_dir: Path | None = None) -> loaders.CheckpointInfo:
        try:
            return loaders.CheckpointInfo.from_hf_repo(self.hf_repo)
        except (OSError, HfHubHTTPError) as err:  # no network, offline mode, missing repo or file
            raise UserError(
                f"model.hf_repo={self.hf_repo}: could not download the weights from the Hugging Face Hub "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                "run where huggingface.co is reachable (or the files are in the HF cache), or download the "
                "checkpoint elsewhere and use model=local model.dir=PATH (a copy of the repo)",
            ) from err


class LocalModel(LocalSpec):
    """model=local: LocalSpec's settings, each file checked before moshi reads it."""

    needs_build: ClassVar[bool] = False

    @classmethod
    def from_folder(cls, folder: Path, **kwargs: Any) -> "LocalModel":
        """A built checkpoint folder's files, each by its own path (as `dir` would find them)."""
        if not (Path(folder) / "config.json").is_file():
            raise UserError(f"{folder}: no config.json, so this is not a checkpoint folder", "rebuild it (model stage)")
        files = cls(dir=str(folder)).files()
        return cls(**{field: str(path) for field, path in files.items() if path is not None}, **kwargs)

    def files(self) -> dict[str, Path | None]:
        """Each file moshi reads, checked readable: the path given, else `dir`'s, named as moshi's `from_hf_repo`
        names a repo's files (its config.json's names, else moshi's defaults)."""
        given = {f: None if getattr(self, f) is None else Path(getattr(self, f)) for f in LOCAL_FILES}
        folder = None if self.dir is None else Path(self.dir)
        if folder is not None and not folder.is_dir():
            raise UserError(f"model.dir={self.dir}: no such folder",
                            f"point model.dir at a copy of the Hub repo ({_REPO_LAYOUT})")
        if given["config_path"] is None and folder is not None and (folder / "config.json").is_file():
            given["config_path"] = folder / "config.json"
        config = {} if given["config_path"] is None else read_json(_given_file("config_path", given["config_path"]))
        for field, (key, default) in FILE_KEYS.items():
            if given[field] is None and folder is None:
                raise UserError(f"model.{field}: no value, and no model.dir to find it in",
                                f"set model.dir=PATH, a copy of the Hub repo ({_REPO_LAYOUT}), or model.{field}=FILE")
            if given[field] is None:
                path = local_file(folder, config.get(key, default))
                given[field] = _readable(path, f"model.dir={self.dir}: {field.replace('_', ' ')} {path}",
                                         f"copy the Hub repo's file there, or set model.{field}=FILE")
        if given["mimi_config_path"] is None and folder is not None and config.get(MIMI_CONFIG_KEY):
            given["mimi_config_path"] = local_file(folder, config[MIMI_CONFIG_KEY])
        return {f: None if path is None else _given_file(f, path) for f, path in given.items()}

    def check_files(self) -> None:
        """Preflight: every file exists and is readable, before the run's first stage."""
        self.files()

    def checkpoint_info(self, checkpoint_dir: Path | None = None) -> loaders.CheckpointInfo:
        paths = self.files()
        mimi_config, lora = paths.pop("mimi_config_path"), paths.pop("lora_weights")
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


def _readable(path: Path, label: str, fix: str) -> Path:
    """`path`, or a UserError `label: file not found` (or unreadable: permissions, a broken mount) with `fix`."""
    if not path.is_file():
        raise UserError(f"{label}: file not found", fix)
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as err:
        raise UserError(f"{label}: cannot be read ({err.strerror})", f"make it readable by this user, or {fix}") \
            from err
    return path


def _given_file(field: str, path: Path) -> Path:
    return _readable(path, f"model.{field}={path}", f"point model.{field} at an existing file")


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


def _load(field: str, path: Any, read: Callable[[], T]) -> T:
    """`read()` of one checkpoint file: a damaged or foreign file is a UserError naming it (safetensors says only
    "header too large", torch.load an unpickling error, sentencepiece "could not parse ModelProto")."""
    damaged = (RuntimeError,) if field == "tokenizer" else (SafetensorError, pickle.UnpicklingError, EOFError)
    try:
        return read()
    except damaged as err:
        raise UserError(f"model.{field}: {path} cannot be loaded, the file is damaged or not what it should be "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                        "replace it with an intact copy (download or copy it again), or point model."
                        f"{field} at the right file") from err


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
    lm = _load("moshi_weights", info.moshi_weights, lambda: info.get_moshi(device=dev, dtype=dt))
    mimi = _load("mimi_weights", info.mimi_weights, lambda: info.get_mimi(device=dev))
    tokenizer = _load("tokenizer", info.tokenizer, info.get_text_tokenizer)
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
    dev = resolve_device(device if device is not None else source.device)
    mimi = _load("mimi_weights", info.mimi_weights, lambda: info.get_mimi(device=dev))
    tokenizer = _load("tokenizer", info.tokenizer, info.get_text_tokenizer)
    config = info.lm_config or loaders._lm_kwargs  # legacy repos without config.json: moshi's 7B config
    _check_consistent(info, _lm_setting(config, "text_card"), _lm_setting(config, "card"), mimi,
                      tokenizer.vocab_size())
    return LoadedCodec(mimi, tokenizer, int(_lm_setting(config, "existing_text_padding_id")),
                       int(_lm_setting(config, "existing_text_end_padding_id")))
