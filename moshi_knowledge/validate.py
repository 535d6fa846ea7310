"""`python -m moshi_knowledge.validate DIR`: check a dataset folder before training on it.

Exit status: 0 when sound, 1 when problems were found (each printed), 2 when DIR is not a dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moshi_knowledge.dataset.validate import count_conversations, validate_dataset
from moshi_knowledge.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moshi_knowledge.validate",
        description="Check a moshi-knowledge dataset (moshi-finetune format) before training on it.",
    )
    parser.add_argument("dataset_dir", type=Path, help="the dataset/ folder written by the dataset stage")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
