"""moshi's own server (`python -m moshi.server`) on each kind of export, as a user starts it: a real process on
local files only, a real websocket client speaking its protocol (opus pages in, opus pages and text out).

The server warms up with CUDA calls, so this runs on a GPU machine only; on CPU,
tests/test_lora.py checks the same exports through the server's loading call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch

from moshi_knowledge.model.load import load_model
from moshi_knowledge.model.lora import apply_lora, export_adapter
from moshi_knowledge.model.tiny import TinyModel, build_tiny_checkpoint
from moshi_knowledge.specs.lora import FullFinetune, LoraSpec

sphn = pytest.importorskip("sphn")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="moshi.server warms up on CUDA")

SAMPLE_RATE = 24000
HANDSHAKE, AUDIO = 0, 1  # the first byte of a websocket message (2: a text piece)
TEXT_SEED = "\n".join(f"line {i} of a story about the river Vel and king Oran" for i in range(200))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    noise = [(0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32) for _ in range(2)]
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", TEXT_SEED, noise, seed=1)


def _trained_export(base: Path, spec, out: Path):
    """An export of `spec` after a stand-in for training (every trainable tensor moved)."""
    loaded = load_model(TinyModel(device="cpu"), base)  # exported on the CPU, served on the GPU
    model = apply_lora(loaded.lm, spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return export_adapter(model, out, loaded.base_config, loaded.checkpoint.mimi_config, also_merged=True)


def _server_args(base: Path, export, merged_folder: bool) -> list[str]:
    """The command line README.md gives for a local base: the base's files plus the export's."""
    files = ["--mimi-weight", str(base / "mimi.safetensors"), "--tokenizer", str(base / "tokenizer.model")]
    if merged_folder:
        return [*files, "--moshi-weight", str(export.merged_weights),
                "--config-path", str(export.merged_weights.parent / "config.json")]
    if export.kind == "lora":
        return [*files, "--moshi-weight", str(base / "model.safetensors"), "--lora-weight", str(export.moshi_weights),
                "--config-path", str(export.moshi_config)]
    return [*files, "--moshi-weight", str(export.moshi_weights), "--config-path", str(export.moshi_config)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _converse(port: int, server: subprocess.Popen, seconds: float) -> tuple[bytes, np.ndarray]:
    """Connect once the server listens, send `seconds` of a tone as opus; return the handshake and a second of
    audio decoded from the server's opus pages."""
    url = f"http://127.0.0.1:{port}/api/chat"
    deadline = time.monotonic() + 300
    async with aiohttp.ClientSession() as session:
        while True:
            assert server.poll() is None, "the server exited before it listened"
            try:
                ws = await session.ws_connect(url)
                break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, "the server did not listen within 300 s"
                await asyncio.sleep(1.0)
        handshake = await ws.receive_bytes(timeout=60)
        writer, reader = sphn.OpusStreamWriter(SAMPLE_RATE), sphn.OpusStreamReader(SAMPLE_RATE)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        for start in range(0, len(tone), 1920):
            page = writer.append_pcm(tone[start:start + 1920])
            if len(page):
                await ws.send_bytes(bytes([AUDIO]) + page)
        pcm = []
        while sum(len(p) for p in pcm) < SAMPLE_RATE:  # a second of Moshi's audio back
            message = await ws.receive_bytes(timeout=60)
            if message[0] == AUDIO:
                pcm.append(reader.append_bytes(message[1:]))
        await ws.close()
    return handshake, np.concatenate(pcm)


@pytest.mark.slow
@pytest.mark.parametrize("spec,merged_folder", [
    (LoraSpec("all", rank=4), False),
    (LoraSpec("all", rank=4), True),  # lora.export_merged
    (LoraSpec("attn_mlp", rank=4, use_dora=True), False),
    (FullFinetune(), False),
], ids=["lora", "lora-merged", "dora", "full"])
def test_moshi_server_serves_the_export_offline(base, spec, merged_folder, tmp_path) -> None:
    export = _trained_export(base, spec, tmp_path / "adapter")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a Hub request would fail at once
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moshi.server", "--host", "127.0.0.1", "--port", str(port),
                                   "--static", "none", *_server_args(base, export, merged_folder)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            handshake, pcm = asyncio.run(_converse(port, server, seconds=4.0))
        except BaseException as err:
            raise AssertionError(f"{err!r}; server log:\n{log.read_text()[-3000:]}") from err
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert handshake == bytes([HANDSHAKE])
    assert len(pcm) >= SAMPLE_RATE and np.isfinite(pcm).all()
    assert "loading moshi" in log.read_text() and "huggingface.co" not in log.read_text()
