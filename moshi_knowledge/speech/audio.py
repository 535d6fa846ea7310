"""Sample-rate conversion shared by the TTS backends and aligners."""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly


def resample_to(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (exact for the rational ratios between audio rates), clipped to [-1, 1]:
    the filter can overshoot full scale a little on peaks."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    g = gcd(rate, target)
    return np.clip(resample_poly(samples, target // g, rate // g), -1.0, 1.0).astype(np.float32)
