"""The sweep report's Calibration section, from fake run directories of a spike-in sweep (sweep=calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from moshi_knowledge.calibration import CALIBRATION_PLOT, points
from moshi_knowledge.sweep_report import main
from moshi_knowledge.tracking.runs import find_runs

N = 48  # heldout_facts questions of every run
CHANCE = 0.25


def _write_run(run_dir: Path, spiked: int, recall: float, null: float, status: str = "completed") -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"qa.spike_in={spiked / N}"]))
    summary = {"status": status, "step": 100, "recall/heldout_facts/mc_acc": recall,
               "recall/heldout_facts/n": N, "recall/heldout_facts/n_spiked": spiked,
               "recall/heldout_facts/chance": CHANCE, "recall/unseen_facts/mc_acc": null}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 100, "train/loss": 1.0}) + "\n")


def _sweep(root: Path, sensitivity: float) -> Path:
    """Four runs spiking 0, 12, 24 and 48 of 48 questions: recall = chance + sensitivity x share x (1 - chance),
    with the null at chance; and one failed run, which must not count."""
    for job, spiked in enumerate((0, 12, 24, 48)):
        share = spiked / N
        _write_run(root / str(job), spiked, CHANCE + sensitivity * share * (1 - CHANCE), CHANCE)
    _write_run(root / "4", 24, 0.0, 0.0, status="failed")
    return root


@pytest.mark.parametrize("sensitivity", [1.0, 0.5])
def test_the_calibration_recovers_the_tiers_sensitivity(tmp_path: Path, sensitivity: float) -> None:
    root = _sweep(tmp_path / "calibration", sensitivity)
    found = points(find_runs(root))
    assert sorted(p.share for p in found) == [0.0, 0.25, 0.5, 1.0]  # the known share from n_spiked / n
    assert main([str(root)]) == 0
    report = (root / "report.md").read_text()
    slope = sensitivity * (1 - CHANCE)
    assert f"recall = {CHANCE:.3f} + {slope:.3f} x share" in report
    assert f"the tier sees {sensitivity:.0%} of a known effect" in report
    assert f"excess over the null = +0.000 + {slope:.3f} x share" in report
    image = matplotlib.image.imread(root / CALIBRATION_PLOT)
    assert image.shape[0] > 300 and image.shape[1] > 600


def test_a_sweep_without_two_known_shares_has_no_calibration_section(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    for job in range(3):
        _write_run(root / str(job), 0, 0.3, 0.25)
    assert main([str(root)]) == 0
    assert "Calibration" not in (root / "report.md").read_text()
    assert not (root / CALIBRATION_PLOT).exists()
