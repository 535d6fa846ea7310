"""A tiny Mimi whose RVQ codebooks are fitted to real audio, so that different audio gives different codes.

A freshly built Mimi has all-zero codebooks: every frame quantizes to code 0 on every level, and an LM
trained on such codes learns nothing about audio. We keep moshi's random encoder (its latents do differ
between inputs) and fit only the quantizer, level by level on the residual that the earlier levels leave:

- k-means with at most one centroid per `FRAMES_PER_CENTROID` frames. Each centroid then averages several
  frames; one centroid per frame would memorise the fitting frames and leave the next level a zero residual.
- The remaining bins are drawn from a Gaussian with the residual's mean and full covariance, so audio unlike
  the fitting set still lands on many distinct codes.

Measured: fitted on 152 s of espeak speech (3 voices), 49 s of a held-out voice (621 frames) used 163-237
distinct codes per codebook, on every level; a fresh Mimi uses 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.quantization.vq import ResidualVectorQuantizer

from moshi_knowledge.errors import UserError

FRAMES_PER_CENTROID = 8
KMEANS_ITERS = 10
MIN_FIT_FRAMES = 16  # below ~1.3 s of speech the residual statistics are meaningless


def tiny_mimi_config(dim: int, filters: int, layers: int, codebook_dim: int, bins: int, n_q: int) -> dict[str, Any]:
    """moshi's Mimi config with small widths; ratios, sample rate and frame rate (24 kHz, 12.5 Hz) unchanged."""
    seanet = dict(loaders._seanet_kwargs, dimension=dim, n_filters=filters)
    quantizer = dict(
        loaders._quantizer_kwargs, dimension=codebook_dim, n_q=n_q, bins=bins, input_dimension=dim, output_dimension=dim
    )
    transformer = dict(
        loaders._transformer_kwargs,
        d_model=dim,
        num_heads=max(1, dim // 16),
        num_layers=layers,
        dim_feedforward=4 * dim,
        input_dimension=dim,
        output_dimensions=[dim],
    )
    return dict(loaders._mimi_config, seanet=seanet, quantizer=quantizer, transformer=transformer)


def _gaussian(residual: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    mean = residual.mean(0)
    cov = torch.cov(residual.T) + 1e-6 * torch.eye(residual.shape[1])
    return mean + torch.randn(n, residual.shape[1], generator=generator) @ torch.linalg.cholesky(cov).T


def _kmeans(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    centroids = points[torch.randperm(points.shape[0], generator=generator)[:k]]
    for _ in range(KMEANS_ITERS):
        assign = torch.cdist(points, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster keeps its seed
    return centroids


def fit_codebook(residual: torch.Tensor, bins: int, generator: torch.Generator) -> torch.Tensor:
    """Centroids [bins, D] for residual vectors [N, D]: k-means where the data supports it, Gaussian for the rest."""
    k = min(bins, residual.shape[0] // FRAMES_PER_CENTROID)
    fitted = _kmeans(residual, k, generator) if k > 0 else residual[:0]
    return torch.cat([fitted, _gaussian(residual, bins - k, generator)])


def _fit_rvq(rvq: ResidualVectorQuantizer, latent: torch.Tensor, generator: torch.Generator) -> None:
    residual = rvq.input_proj(latent)[0].T.contiguous().cpu()  # [N, codebook_dim]; fitted on the CPU, seeded
    for layer in rvq.vq.layers:
        centroids = fit_codebook(residual, rvq.bins, generator)
        residual = residual - centroids[torch.cdist(residual, centroids).argmin(1)]
        codebook = layer._codebook
        # moshi stores a codebook as embedding_sum / cluster_usage and caches the quotient in `_embedding`.
        codebook.embedding_sum.copy_(centroids)
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
        codebook.register_buffer("_embedding", None, persistent=False)


@torch.no_grad()
def fit_mimi_codebooks(mimi: MimiModel, audio: Sequence[np.ndarray], seed: int) -> int:
    """Fit every RVQ level of `mimi` to mono 24 kHz float clips; returns the number of frames used.

    The clips are encoded wherever `mimi` is (a full-size Mimi encodes ~9x real time on a CPU core); the fit itself
    runs on the CPU with a seeded generator, so the same clips give the same codebooks on any device."""
    device = next(mimi.parameters()).device
    latents = [
        mimi.encode_to_latent(torch.as_tensor(np.asarray(clip, dtype=np.float32))[None, None].to(device),
                              quantize=False)
        for clip in audio
        if len(clip) > 0
    ]
    frames = sum(lat.shape[-1] for lat in latents)
    if frames < MIN_FIT_FRAMES:
        raise UserError(
            f"model=tiny: fitting the tiny Mimi's codebooks needs at least {MIN_FIT_FRAMES} frames "
            f"({MIN_FIT_FRAMES / mimi.frame_rate:.1f} s) of speech, got {frames}",
            "pass more speech to build_tiny_checkpoint (the model stage passes the run's TTS utterances)",
        )
    latent = torch.cat(latents, dim=-1)
    generator = torch.Generator().manual_seed(seed)
    quantizer = mimi.quantizer
    _fit_rvq(quantizer.rvq_first, latent, generator)  # the "semantic" level and the rest project x separately
    _fit_rvq(quantizer.rvq_rest, latent, generator)
    return frames
