"""Known third-party warnings that say nothing to a user of this app, silenced by module and message only.

- peft warns at import that it will drop support for the transformers that moshi's stack pins.
- peft warns, when it first applies LoRA, that the installed torchao (train.fp8's, the last release for moshi's
  torch) is too old for peft's torchao-quantized layers, which this app does not use.
- bitsandbytes (imported by peft) logs that it could not fetch an optional CPU 4-bit kernel from the Hub; this
  app never quantises to 4 bits.
"""

from __future__ import annotations

import logging
import warnings

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward"


def _not_the_bnb_kernel_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_KERNEL_MESSAGE)


def silence_known_warnings() -> None:
    """Install the filters; before peft's first import, which the run's model stage does."""
    warnings.filterwarnings("ignore", message=r"Support for Transformers < .* is deprecated in PEFT",
                            category=FutureWarning, module=r"peft\.import_utils")
    warnings.filterwarnings("ignore", message=r"Found an incompatible version of torchao",
                            category=UserWarning, module=r"peft\.import_utils")
    bnb = logging.getLogger(BNB_CPU_LOGGER)
    if _not_the_bnb_kernel_notice not in bnb.filters:
        bnb.addFilter(_not_the_bnb_kernel_notice)
