"""The sweep report, from synthetic run directories laid out as a Hydra multirun writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from PIL import Image

from moshi_knowledge.report import main
from moshi_knowledge.tracking.runs import find_runs

TIERS = ("train", "eval", "paraphrase")


def _write_run(
    run_dir: Path,
    overrides: list[str],
    status: str,
    losses: list[float],
    recall: dict[str, float] | None = None,
    message: str | None = None,
    events: int = 0,
) -> None:
    """A run dir as train + eval leave it: metrics rows per step, eval rows every 2 steps, summary, overrides."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text("train: {lr: 0.001}\n")
    rows = []
    for step, loss in enumerate(losses, 1):
        finite = math.isfinite(loss)
        rows.append({"step": step, "train/loss": loss if finite else None, "train/text_loss": loss if finite else None,
                     "train/lr": 1e-3, "train/grad_norm": 1.0, "nan_guard/events": 0 if finite else events})
        if step % 2 == 0:
            rows.append({"step": step, "eval/loss": loss + 0.3 if finite else None})
    if recall:
        rows.append({"step": len(losses), **{f"recall/{t}/mc_acc": acc for t, acc in recall.items()}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary: dict = {"status": status, "step": len(losses), "nan_guard/events": events}
    if message:
        summary["message"] = message
    for tier, acc in (recall or {}).items():
        summary.update({f"recall/{tier}/mc_acc": acc, f"recall/{tier}/mc_acc_low": acc - 0.15,
                        f"recall/{tier}/mc_acc_high": min(1.0, acc + 0.08), f"recall/{tier}/best_mc_acc": acc,
                        f"recall/{tier}/baseline_mc_acc": 0.25, f"recall/{tier}/delta": acc - 0.25,
                        f"recall/{tier}/p_value": 0.0123, f"recall/{tier}/n": 40})
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """A 2 x 2 lora.rank x train.lr sweep with one diverged, one failed and one killed job, plus a rerun."""
    root = tmp_path / "lora_rank_lr_2025-01-01_10-00-00"
    common = ["sweep=lora_rank_lr", "experiment=demo"]
    good = {"train": 0.9, "eval": 0.85, "paraphrase": 0.4}
    _write_run(root / "0", [*common, "lora.rank=8", "train.lr=0.0001"], "completed", [3.0, 2.0, 1.5, 1.2], good)
    _write_run(root / "1", [*common, "lora.rank=8", "train.lr=0.001"], "completed", [3.0, 1.0, 0.5, 0.3],
               {"train": 1.0, "eval": 0.95, "paraphrase": 0.5})
    _write_run(root / "2", [*common, "lora.rank=32", "train.lr=0.0001"], "diverged", [3.0, 50.0, math.nan],
               message="non-finite loss or gradient norm at step 3; nan_guard=halt ended the run", events=1)
    _write_run(root / "3", [*common, "lora.rank=32", "train.lr=0.001"], "failed", [3.0],
               message="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    _write_run(root / "10", [*common, "lora.rank=64", "train.lr=0.001"], "running", [3.0, 2.5])
    with (root / "10" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "train/lo')  # killed mid-write
    (root / "0" / "wandb" / "offline-run-x").mkdir(parents=True)  # W&B's own files are not runs
    return root


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in rows if cells[0] != "---"}


def test_report_table_statuses_and_figures(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    report = (sweep / "report.md").read_text()
    assert printed.strip() in report
    header = next(line for line in report.splitlines() if line.startswith("| run"))
    assert "eval recall [95% CI]" in header and "paraphrase Δ base" in header and "NaN events" in header
    rows = _table_rows(report)
    assert list(rows) == ["run", "0", "1", "2", "3", "10"]  # job folders in numeric order
    assert rows["0"][1] == "lora.rank=8 train.lr=0.0001"  # only what differs; the shared overrides are listed once
    assert "Common overrides: `sweep=lora_rank_lr`, `experiment=demo`" in report
    assert rows["0"][2] == "completed" and rows["1"][2] == "completed"
    assert rows["2"][2].startswith("diverged: non-finite loss") and rows["3"][2].startswith("failed: RuntimeError")
    assert rows["10"][2] == "running"
    assert "5 runs: 2 completed, 1 diverged, 1 failed, 1 running" in report
    col = rows["run"].index
    assert rows["1"][col("train loss")] == "0.3" and rows["1"][col("eval loss")] == "0.6"
    assert rows["1"][col("eval recall [95% CI]")] == "0.950 [0.800, 1.000]"
    assert rows["1"][col("eval Δ base")] == "+0.700" and rows["1"][col("eval p")] == "0.0123"
    assert rows["2"][col("train loss")] == "nan" and rows["2"][col("NaN events")] == "1"
    assert rows["2"][col("eval recall [95% CI]")] == "–"
    assert rows["10"][col("train loss")] == "2.5"  # the killed run's last whole row


def test_report_plots_are_real_pngs(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    for name in ["loss_curves.png", *(f"recall_heatmap_{t}.png" for t in TIERS)]:
        assert f"]({name})" in report
        image = matplotlib.image.imread(sweep / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01, name


def test_one_swept_parameter_gets_a_recall_plot_with_chance_and_n(tmp_path: Path) -> None:
    for i, lr in enumerate(["0.0001", "0.001"]):
        _write_run(tmp_path / str(i), [f"train.lr={lr}"], "completed", [2.0, 1.0], {"eval": 0.5 + i / 4})
    rows = [{"step": 2, "qid": "q0", "tier": "eval", "candidates": [{"text": t} for t in "abcde"]}]
    (tmp_path / "0" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "![recall over train.lr](recall_train.lr.png)" in report and "chance (0.20" in report
    assert matplotlib.image.imread(tmp_path / "recall_train.lr.png").shape[0] > 100
    assert not list(tmp_path.glob("recall_heatmap_*.png")) and (tmp_path / "loss_curves.png").exists()


def test_the_heatmaps_say_chance_and_n_and_centre_their_scale_on_chance(sweep: Path) -> None:
    assert main([str(sweep)]) == 0  # no predictions.jsonl: chance unknown
    assert "Chance is unknown" in (sweep / "report.md").read_text()
    assert Image.open(sweep / "recall_heatmap_eval.png").text["Title"] == "final recall/eval/mc_acc"

    rows = [{"step": 4, "qid": "q0", "tier": "eval", "candidates": [{"text": t} for t in "abcd"]}]
    (sweep / "1" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_run(sweep / "11", ["sweep=lora_rank_lr", "experiment=demo", "lora.rank=8", "train.lr=0.001"],
               "completed", [3.0, 1.0], {"train": 0.8, "eval": 0.75, "paraphrase": 0.5})  # a second run of a cell
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "centred on chance (0.25, one of the candidates at random" in report
    assert "the final recall and n, the number of questions" in report
    meta = Image.open(sweep / "recall_heatmap_eval.png").text
    assert meta["Title"] == "final recall/eval/mc_acc (chance 0.25)"
    cells = meta["Description"].split("; ")
    assert "lora.rank=8 train.lr=0.0001: 0.85 n = 40" in cells
    assert "lora.rank=8 train.lr=0.001: 0.85 n = 40 ×2" in cells  # the mean of 0.95 and 0.75
    assert "lora.rank=32 train.lr=0.0001: diverged" in cells and "lora.rank=64 train.lr=0.001: running" in cells


def test_a_single_run_dir_without_hydra_is_a_report_of_one(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "train/loss": 0.4}))
    assert main([str(run)]) == 0
    rows = _table_rows((run / "report.md").read_text())
    assert rows["demo"][1:4] == ["–", "completed", "0.4"]


def test_no_runs_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no runs under" in err and "fix:" in err


def test_a_resumed_run_keeps_the_last_value_of_a_repeated_step(tmp_path: Path) -> None:
    _write_run(tmp_path / "r", [], "completed", [3.0, 2.0])
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "train/loss": 1.5}) + "\n")  # the resumed attempt re-logged step 2
    (run,) = find_runs(tmp_path)
    assert run.series("train/loss") == ([1, 2], [3.0, 1.5])
    assert run.final("train/loss") == 1.5 and run.final("eval/loss") == 2.3


def test_runs_differing_only_by_seed_get_mean_spread_and_interval_per_tier(tmp_path: Path, sweep: Path) -> None:
    root = tmp_path / "seeds_2025-01-01_10-00-00"
    for seed, acc in enumerate([0.8, 0.9, 1.0]):
        _write_run(root / str(seed), ["sweep=seeds", f"seed={seed}"], "completed", [2.0, 1.0],
                   {"train": acc, "eval": 0.25})
        summary = json.loads((root / str(seed) / "summary.json").read_text())
        (root / str(seed) / "summary.json").write_text(json.dumps({**summary, "recall/train/mc_acc_silence": 0.25}))
    _write_run(root / "3", ["sweep=seeds", "seed=3"], "diverged", [2.0, math.nan], {"train": 0.0})
    assert main([str(root)]) == 0
    report = (root / "report.md").read_text()
    rows = _table_rows(report[report.index("## Across seeds"):])
    assert rows["train"] == ["train", "3", "0.900", "0.100", "[0.652, 1.148]"]  # t(0.975, 2) = 4.303; diverged out
    assert rows["eval"][1:4] == ["3", "0.250", "0.000"]
    assert rows["train (silence)"][1:3] == ["3", "0.250"]
    assert main([str(sweep)]) == 0 and "Across seeds" not in (sweep / "report.md").read_text()  # a grid: no


def test_a_run_on_the_default_seed_counts_beside_runs_given_a_seed(tmp_path: Path) -> None:
    """A first run (no seed override), and then seed=1 run beside it: two seeds of one config."""
    root = tmp_path / "demo_seeds"
    _write_run(root / "0", ["experiment=demo"], "completed", [2.0, 1.0], {"train": 1.0})
    _write_run(root / "1", ["experiment=demo", "seed=1"], "completed", [2.0, 1.0], {"train": 0.8})
    assert main([str(root)]) == 0
    report = (root / "report.md").read_text()
    assert _table_rows(report[report.index("## Across seeds"):])["train"][1:3] == ["2", "0.900"]


def _config_seed_sweep(root: Path, recalls: dict[str, list[float]]) -> None:
    """Runs of each `lora.rank` config with seeds 0, 1, 2, ...; `recalls[rank][seed]` is the final train recall."""
    job = 0
    for rank, values in recalls.items():
        for seed, acc in enumerate(values):
            _write_run(root / str(job), ["sweep=seeds", f"lora.rank={rank}", f"seed={seed}"], "completed", [2.0, 1.0],
                       {"train": acc, "eval": 0.25 + 0.01 * seed})
            job += 1


def test_two_configs_on_the_same_seeds_get_a_paired_verdict_per_tier(tmp_path: Path) -> None:
    # rank 16 beats rank 8 on every seed by 0.09-0.11 although the seeds spread the recall far more than that
    _config_seed_sweep(tmp_path, {"8": [0.50, 0.70, 0.90, 0.60], "16": [0.60, 0.79, 1.00, 0.71]})
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## Configs compared across seeds"):]
    rows = {r[0]: r for r in _table_rows(section).values() if r[0] != "tier"}
    assert rows["train"][1:5] == ["lora.rank=8", "lora.rank=16", "4", "+0.100"]
    assert float(rows["train"][6]) < 0.001 and rows["train"][7] == "B better"
    assert rows["eval"][4] == "+0.000" and rows["eval"][6] == "1" and rows["eval"][7].startswith("indistinguishable")
    assert "Across seeds" not in report


def test_a_difference_within_the_seed_noise_is_indistinguishable(tmp_path: Path) -> None:
    _config_seed_sweep(tmp_path, {"8": [0.50, 0.70, 0.90], "16": [0.62, 0.61, 0.95]})  # +0.12, -0.09, +0.05
    # a third config whose one run diverged: no seed with recall in both, so no pair with it is tested
    _write_run(tmp_path / "9", ["sweep=seeds", "lora.rank=32", "seed=2"], "diverged", [2.0, math.nan])
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    rows = [r for r in _table_rows(report[report.index("## Configs compared across seeds"):]).values()]
    train = next(r for r in rows if r[0] == "train")
    assert train[3:5] == ["3", "+0.027"] and float(train[6]) > 0.5 and train[7] == "indistinguishable (p ≥ 0.05)"
    assert not any("lora.rank=32" in r for r in rows)



def _write_predictions(run_dir: Path, tier: str, correct: list[bool], step: int = 4) -> None:
    """The final evaluation's prediction rows (and a step-0 one that must not count)."""
    rows = [{"step": s, "qid": f"q{i}", "tier": tier, "cluster": f"f{i}", "mc_correct": ok if s else False}
            for s in (0, step) for i, ok in enumerate(correct)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("best_right,runner_right,clear", [(30, 10, True), (21, 20, False)])
def test_the_report_names_the_winner_only_when_the_runner_up_is_beaten_on_the_same_questions(
        tmp_path: Path, best_right: int, runner_right: int, clear: bool) -> None:
    root = tmp_path / "sweep"
    for name, rank, right in (("0", 2, runner_right), ("1", 4, best_right), ("2", 8, 5)):
        _write_run(root / name, [f"lora.rank={rank}"], "completed", [3.0, 2.0, 1.5, 1.2], {"eval": right / 40})
        _write_predictions(root / name, "eval", [i < right for i in range(40)])
    assert main([str(root)]) == 0
    report = (root / "report.md").read_text()
    section = report.split("## Which config won")[1].split("\n|")[0]
    assert f"`lora.rank=4` is best ({best_right / 40:.3f})" in section
    if clear:
        assert "beats `lora.rank=2` (0.250" in section
    else:
        assert "indistinguishable" in section and "does not say which is better" in section
    row = _table_rows(report)["eval"]
    assert row[3] == "40" and row[4] == f"{best_right - runner_right} / 0"
    assert row[6] == ("yes" if clear else "no")
