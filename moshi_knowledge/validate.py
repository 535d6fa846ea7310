"""`python -m moshi_knowledge.validate DIR`: check a dataset folder before training on it.

Exit status: 0 when sound, 1 when problems were found (each printed), 2 when DIR is not a dataset.
`--moshi-finetune` also prints the `data:` block that trains moshi-finetune on the train split alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from moshi_knowledge.dataset.format import EVAL_MANIFEST, TRAIN_MANIFEST
from moshi_knowledge.dataset.validate import count_conversations, validate_dataset
from moshi_knowledge.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moshi_knowledge.validate",
        description="Check a moshi-knowledge dataset (moshi-finetune format) before training on it.",
    )
    parser.add_argument("dataset_dir", type=Path, help="the dataset/ folder written by the dataset stage")
    parser.add_argument("--moshi-finetune", action="store_true",
                        help="then print the `data:` block of a moshi-finetune config for this dataset")
    args = parser.parse_args(argv)
    try:
        problems = validate_dataset(args.dataset_dir)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} problem(s) in {args.dataset_dir}", file=sys.stderr)
        return 1
    print(f"OK: {count_conversations(args.dataset_dir)} conversations")
    if args.moshi_finetune:
        print(moshi_finetune_data(args.dataset_dir), end="")
    return 0


def moshi_finetune_data(dataset_dir: Path) -> str:
    """moshi-finetune's `data:` block naming each split's manifest. Given a folder, moshi-finetune reads every
    *.jsonl under it, so `train_data: dataset/` would train on eval.jsonl too: the block names the files."""
    root = dataset_dir.resolve()
    block = {"data": {"train_data": str(root / TRAIN_MANIFEST), "eval_data": str(root / EVAL_MANIFEST)}}
    return "# moshi-finetune: the manifests, never the folder (it would train on eval.jsonl as well)\n" + \
        yaml.safe_dump(block, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
