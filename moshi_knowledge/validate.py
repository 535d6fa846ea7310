"""`moshi-knowledge validate DIR` (or `python -m moshi_knowledge.validate DIR`): check a dataset folder before
training on it.

Exit status: 0 when sound, 1 when problems were found (each printed), 2 when DIR is not a dataset.
`--moshi-finetune` also prints the `data:` block that trains moshi-finetune on the train split alone. Given a folder
this project did not write (no meta.json), or a manifest, it checks what `dataset=moshi_finetune dataset.path=DIR`
would import: one manifest, stereo wavs, each with its alignment JSON, durations as listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from moshi_knowledge.dataset.format import EVAL_MANIFEST, META, TRAIN_MANIFEST
from moshi_knowledge.dataset.moshi_finetune import MoshiFinetuneDataset, describe
from moshi_knowledge.dataset.validate import count_conversations, validate_dataset
from moshi_knowledge.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moshi-knowledge validate",
        description="Check a moshi-knowledge dataset (moshi-finetune format) before training on it.",
    )
    parser.add_argument("dataset_dir", type=Path, help="the dataset/ folder written by the dataset stage")
    parser.add_argument("--moshi-finetune", action="store_true",
                        help="then print the `data:` block of a moshi-finetune config for this dataset; "
                             "DIR may also be any moshi-finetune dataset (a folder with one *.jsonl, or the file)")
    args = parser.parse_args(argv)
    if args.moshi_finetune and not (args.dataset_dir / META).is_file():
        return _check_import(args.dataset_dir)
    try:
        problems = validate_dataset(args.dataset_dir)
    except UserError as e:
        return _not_a_dataset(e)
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} problem(s) in {args.dataset_dir}", file=sys.stderr)
        return 1
    print(f"OK: {count_conversations(args.dataset_dir)} conversations")
    if args.moshi_finetune:
        print(moshi_finetune_data(args.dataset_dir), end="")
    return 0


def _check_import(path: Path) -> int:
    """The checks `dataset=moshi_finetune` makes before a run, on a dataset of another origin."""
    try:
        dataset = MoshiFinetuneDataset(str(path))
    except UserError as e:
        return _not_a_dataset(e)
    problems = dataset.problems()
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} problem(s) in {dataset.manifest}", file=sys.stderr)
        return 1
    print(describe(dataset))
    print(yaml.safe_dump({"data": {"train_data": str(dataset.manifest.resolve())}}, sort_keys=False), end="")
    return 0


def _not_a_dataset(err: UserError) -> int:
    print(f"error: {err.message}", file=sys.stderr)
    if err.fix:
        print(f"  fix: {err.fix}", file=sys.stderr)
    return 2


def moshi_finetune_data(dataset_dir: Path) -> str:
    """moshi-finetune's `data:` block naming each split's manifest. Given a folder, moshi-finetune reads every
    *.jsonl under it, so `train_data: dataset/` would train on eval.jsonl too: the block names the files."""
    root = dataset_dir.resolve()
    block = {"data": {"train_data": str(root / TRAIN_MANIFEST), "eval_data": str(root / EVAL_MANIFEST)}}
    return "# moshi-finetune: the manifests, never the folder (it would train on eval.jsonl as well)\n" + \
        yaml.safe_dump(block, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
