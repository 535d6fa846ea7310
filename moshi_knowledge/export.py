"""`moshi-knowledge export RUN_DIR`: make a run's adapter loadable again after its directory moved.

A base with a Mimi of its own (the tiny model, local folders naming a `mimi_config_name`) gets its Mimi config
exported beside each adapter config.json, named by absolute `file://` path: the one form moshi.server resolves
without the Hub. Moving the run directory leaves that path pointing at the old place; this re-exports each
config.json (adapter/moshi, adapter/merged) naming the copy where it lies now. The weights name no path: they stay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json, read_json

ADAPTER_FORMATS = ("moshi", "merged")  # the moshi-format folders of adapter/ (export_adapter in model/lora.py)


def reexport(run_dir: Path) -> list[Path]:
    """Re-point every adapter config.json of `run_dir` at the Mimi config beside it; return those rewritten."""
    from moshi_knowledge.model.load import MIMI_CONFIG_FILE, MIMI_CONFIG_KEY, local_file_name

    configs = [run_dir / "adapter" / name / "config.json" for name in ADAPTER_FORMATS]
    configs = [path for path in configs if path.is_file()]
    if not configs:
        raise UserError(f"{run_dir}: no adapter/moshi/config.json (a run writes its adapter after training)",
                        "give the directory of a run that finished training, the one holding adapter/")
    rewritten = []
    for path in configs:
        mimi = path.parent / MIMI_CONFIG_FILE
        if not mimi.is_file():
            continue  # the base uses moshi's default Mimi: the config names no file
        config = read_json(path)
        if config.get(MIMI_CONFIG_KEY) != local_file_name(mimi):
            atomic_write_json(path, config | {MIMI_CONFIG_KEY: local_file_name(mimi)})
            rewritten.append(path)
    return rewritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moshi-knowledge export",
        description="Re-export a run's adapter after moving the run directory: each adapter config.json names "
                    "its Mimi config by absolute path (so that moshi.server loads it offline); this points it "
                    "at the folder's current place. Exit 0 when the adapter loads from here, 2 when RUN_DIR "
                    "holds no adapter.",
    )
    parser.add_argument("run_dir", type=Path, help="a run's directory (the one holding adapter/)")
    args = parser.parse_args(argv)
    try:
        rewritten = reexport(args.run_dir)
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        print(f"  fix: {err.fix}", file=sys.stderr)
        return 2
    for path in rewritten:
        print(f"re-exported {path}")
    if not rewritten:
        print(f"{args.run_dir / 'adapter'}: already loadable from here (nothing names an old path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
