"""Training mechanics for any moshi LMModel: batches, packing, loss, NaN guard, checkpoints, DDP/FSDP, the loop.

Entry point: `loop.train`. The package itself imports nothing heavy, so `config.TrainConfig` can back the config
schema; the modules that import moshi need NO_TORCH_COMPILE=1 set before, on CPU (docs/moshi.md, compilation).
"""
