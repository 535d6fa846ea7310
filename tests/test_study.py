"""The sweep report's Study section, from fake run directories of a regime × exposures × seed sweep."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from moshi_knowledge.evaluation.metrics import holm
from moshi_knowledge.study import STUDY_PLOT, excess_p
from moshi_knowledge.sweep_report import main

SEEDS = (0, 1, 2)
NULL = 0.25  # unseen_facts recall of every run
# regime -> tier -> the excess over the null per seed at the high dose (30 exposures per fact); the low dose (3)
# has a third of it. mixed: clearly above the null; narration: nothing (a tight zero on heldout_facts, a noisy
# spread on eval); dialogue: the trained Q/A (the positive control) far above, the rest at the null.
EXCESS = {
    "dialogue": {"train": [0.58, 0.60, 0.62], "heldout_facts": [-0.02, 0.0, 0.02], "eval": [0.0, 0.02, -0.02]},
    "narration": {"train": [0.01, -0.01, 0.0], "heldout_facts": [-0.02, 0.0, 0.02], "eval": [-0.10, 0.05, 0.20]},
    "mixed": {"train": [0.55, 0.57, 0.59], "heldout_facts": [0.28, 0.30, 0.32], "eval": [0.18, 0.20, 0.22]},
}
MDE = 0.15


def _write_run(run_dir: Path, regime: str, dose: int, seed: int) -> None:
    """A completed run as the app leaves it: summary.json and Hydra's overrides.yaml and hydra.yaml. The mixed runs
    name their layout only in hydra.yaml (an experiment preset chose it); the narration runs did not measure their
    exposures (the override stands in)."""
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = [f"train.exposures_per_fact={dose}", f"seed={seed}"]
    if regime != "mixed":
        overrides.insert(0, f"layout={regime}")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"layout": regime, "schema/layout@layout": f"{regime}_schema", "sweep": None}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    summary: dict = {"status": "completed", "step": 10, "recall/unseen_facts/mc_acc": NULL,
                     "recall/unseen_facts/chance": 0.25, "recall/unseen_facts/mde": MDE,
                     "recall/retain/mc_acc": 0.40 - 0.01 * dose / 3, "recall/retain/delta": -0.01 * dose / 3,
                     "voice/f0_semitones_vs_baseline": -0.1 * dose / 3 - 0.1 * seed}
    if regime != "narration":
        summary["data/exposures_per_fact"] = dose * (1 + 0.01 * seed)  # measured: a little off the nominal dose
    for tier, values in EXCESS[regime].items():
        excess = values[seed] * (1 if dose == 30 else 1 / 3)
        summary.update({f"recall/{tier}/mc_acc": NULL + excess, f"recall/{tier}/mc_acc_high": NULL + excess + 0.1,
                        f"recall/{tier}/chance": 0.25, f"recall/{tier}/mde": MDE,
                        f"recall/{tier}/p_vs_null": 0.001 if excess > MDE else 0.5,
                        f"recall/{tier}/p_vs_null_holm": 0.003 if excess > MDE else 1.0})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.0}) + "\n")


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    root = tmp_path / "injection_2025-01-01_10-00-00"
    job = 0
    for regime in EXCESS:
        for dose in (3, 30):
            for seed in SEEDS:
                _write_run(root / str(job), regime, dose, seed)
                job += 1
    return root


def _rows(section: str) -> dict[tuple[str, str], list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines() if line.startswith("| ")]
    return {(r[0], r[1]): r for r in rows if r[0] not in ("---", "regime")}


def test_the_study_section_gives_each_regime_and_tier_its_verdict(study: Path) -> None:
    assert main([str(study)]) == 0
    report = (study / "report.md").read_text()
    section = report[report.index("## Study"):].split("\n## ")[0]
    table = section.split("Excess over the null at every dose")[0]
    rows = _rows(table)
    assert len(rows) == 9  # 3 regimes × (train, heldout_facts, eval)
    header = next(line for line in table.splitlines() if line.startswith("| regime"))
    col = [c.strip() for c in header.strip("|").split(" | ")].index
    assert rows["mixed", "heldout_facts"][col("verdict")] == "above null"
    assert rows["mixed", "eval"][col("verdict")] == "above null"
    assert rows["narration", "heldout_facts"][col("verdict")] == "no effect larger than 0.05"  # 4.30 × 0.02 / √3
    assert rows["narration", "eval"][col("verdict")] == "inconclusive (MDE 0.15)"  # the seeds spread too far
    assert rows["dialogue", "train"][col("role")] == "positive control"
    assert rows["dialogue", "train"][col("verdict")] == "above null"
    assert rows["narration", "train"][col("role")] == "latent"  # narration never trains the Q/A
    assert rows["mixed", "heldout_facts"][col("excess over null")] == "+0.300"
    assert rows["mixed", "heldout_facts"][col("95% CI (t, seeds)")] == "[+0.250, +0.350]"  # ± 4.303 × 0.02 / √3
    assert rows["mixed", "heldout_facts"][col("seeds")] == "3" and rows["mixed", "eval"][col("MDE")] == "0.15"
    # the dose tested is each regime's highest: measured (30, 30.3, 30.6) where measured, else the override
    assert rows["mixed", "eval"][col("exposures/fact")] == "30.3"
    assert rows["narration", "eval"][col("exposures/fact")] == "30"
    # Holm over the nine tests of the table
    raw = {f"{r}/{t}": excess_p(v) for r, tiers in EXCESS.items() for t, v in tiers.items()}
    adjusted = holm(raw)
    assert float(rows["mixed", "heldout_facts"][col("Holm p")]) == pytest.approx(adjusted["mixed/heldout_facts"],
                                                                                  rel=1e-2)
    assert adjusted["mixed/heldout_facts"] > raw["mixed/heldout_facts"]
    lines = {line.split("**")[1]: line for line in section.splitlines() if line.startswith("- **")}
    assert "latent recall above the null on heldout_facts, eval" in lines["mixed"]
    assert "no latent tier above the null" in lines["narration"] and "no latent tier" in lines["dialogue"]
    assert "Positive control train: above null" in lines["dialogue"]
    assert "Retain vs base model: -0.100" in lines["mixed"]
    assert list(lines) == ["dialogue", "narration", "mixed"]


def test_the_run_table_gives_each_tier_its_mde_and_verdict(study: Path) -> None:
    """Each run's own reading, as its final table printed it (evaluation.run_summary.tier_verdict)."""
    assert main([str(study)]) == 0
    report = (study / "report.md").read_text()
    rows = {r[0]: r for line in report.splitlines() if line.startswith("| ")
            if (r := [c.strip() for c in line.strip("|").split(" | ")])}
    col = rows["run"].index
    assert rows["15"][col("heldout_facts MDE")] == "0.15"  # mixed, 30 exposures, seed 0: excess 0.28
    assert rows["15"][col("heldout_facts verdict")] == "above null"
    assert rows["9"][col("heldout_facts verdict")] == "no effect larger than 0.08"  # narration: 0.23 + 0.1 - 0.25
    assert rows["9"][col("unseen_facts verdict")] == "–"  # no headline test on the null itself


def test_the_study_section_shows_every_dose_forgetting_and_a_readable_figure(study: Path) -> None:
    assert main([str(study)]) == 0
    report = (study / "report.md").read_text()
    doses = _rows(report[report.index("Excess over the null at every dose"):report.index("Forgetting")])
    assert doses["mixed", "heldout_facts"][2:] == ["+0.100 [+0.083, +0.117]", "+0.300 [+0.250, +0.350]"]
    retain = [r for r in _rows(report[report.index("Forgetting"):].split("![")[0]).values()]
    # voice drift over seeds 0-2 at dose 3: -0.1, -0.2, -0.3 semitones; mean -0.2 +- t(2) 4.30 * 0.1 / sqrt(3)
    assert ["narration", "3", "3", "0.390 [0.390, 0.390]", "-0.010 [-0.010, -0.010]",
            "-0.200 [-0.448, +0.048]"] in retain
    assert f"]({STUDY_PLOT})" in report
    image = matplotlib.image.imread(study / STUDY_PLOT)
    assert image.shape[1] > 2 * image.shape[0] > 400 and image.std() > 0.01  # three panels side by side


def test_a_sweep_whose_runs_share_a_layout_has_no_study_section(tmp_path: Path) -> None:
    for seed in SEEDS:
        _write_run(tmp_path / str(seed), "mixed", 30, seed)
    assert main([str(tmp_path)]) == 0
    assert "## Study" not in (tmp_path / "report.md").read_text()
