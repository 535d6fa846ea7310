"""The sweep report, from synthetic run directories laid out as a Hydra multirun writes them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from PIL import Image

from moshi_knowledge.sweep_report import _cell, main
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
    common = ["sweep=lora_rank_lr", "experiment=demo", "hydra.launcher.n_jobs=2", "launcher=joblib"]
    good = {"train": 0.9, "eval": 0.85, "paraphrase": 0.4}

    def where(job: str) -> list[str]:  # settings that differ per job but say where it ran, not what it tested
        return [f"logger.name=job{job}", f"paths.runs_dir=runs{job}", f"hydra.job.name=j{job}"]

    _write_run(root / "0", [*common, "lora.rank=8", "train.lr=0.0001", *where("0")], "completed",
               [3.0, 2.0, 1.5, 1.2], good)
    _write_run(root / "1", [*common, "lora.rank=8", "train.lr=0.001", *where("1")], "completed", [3.0, 1.0, 0.5, 0.3],
               {"train": 1.0, "eval": 0.95, "paraphrase": 0.5})
    _write_run(root / "2", [*common, "lora.rank=32", "train.lr=0.0001", *where("2")], "diverged", [3.0, 50.0, math.nan],
               message="non-finite loss or gradient norm at step 3; nan_guard=halt ended the run", events=1)
    _write_run(root / "3", [*common, "lora.rank=32", "train.lr=0.001", *where("3")], "failed", [3.0],
               message="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    _write_run(root / "10", [*common, "lora.rank=64", "train.lr=0.001", *where("10")], "running", [3.0, 2.5])
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
    table = printed.split("\n\n")[1]  # the tier × config table, also in report.md
    assert table in report and max(map(len, table.splitlines())) <= 100
    assert table.splitlines()[0].split() == ["tier", "n", "#1", "#2", "#3", "#4", "#5"]
    assert table.splitlines()[2].split() == ["train", "40", "0.90", "1.00*", "diverged", "failed", "running"]
    legend = printed.split("\n\n")[2]  # each config's overrides, below the table
    assert "#2  lora.rank=8 train.lr=0.001" in legend and legend in report and "5 runs: 2 completed" in printed
    header = next(line for line in report.splitlines() if line.startswith("| run"))
    assert "eval recall [95% CI]" in header and "paraphrase Δ base" in header and "NaN events" in header
    rows = _table_rows(report[report.index("## Runs"):])
    assert list(rows) == ["run", "0", "1", "2", "3", "10"]  # job folders in numeric order
    assert rows["0"][2] == "lora.rank=8 train.lr=0.0001"  # only what differs; the shared overrides are listed once
    assert "Common overrides: `sweep=lora_rank_lr`, `experiment=demo`" in report
    assert rows["0"][3] == "completed" and rows["1"][3] == "completed"
    assert rows["2"][3].startswith("diverged: non-finite loss") and rows["3"][3].startswith("failed: RuntimeError")
    assert rows["10"][3] == "running"
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
    for name in ["loss_curves.png", "recall_vs_step.png", "recall_heatmaps.png"]:
        assert f"]({name})" in report
        image = matplotlib.image.imread(sweep / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01, name


def test_one_swept_parameter_gets_a_panel_per_tier(tmp_path: Path) -> None:
    for i, lr in enumerate(["0.0001", "0.001"]):
        _write_run(tmp_path / str(i), [f"train.lr={lr}"], "completed", [2.0, 1.0], {t: 0.5 + i / 4 for t in TIERS})
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "![recall over train.lr](recall_train.lr.png)" in report and "a panel per tier" in report
    image = matplotlib.image.imread(tmp_path / "recall_train.lr.png")
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side, not three tiers stacked in one
    assert Image.open(tmp_path / "recall_train.lr.png").text["Title"] == "final MC recall over train.lr per tier"
    assert not (tmp_path / "recall_heatmaps.png").exists() and (tmp_path / "loss_curves.png").exists()


def test_the_heatmaps_give_each_cell_its_interval_and_n_on_a_scale_centred_on_chance(sweep: Path) -> None:
    rows = [{"step": 4, "qid": "q0", "tier": "eval", "candidates": [{"text": t} for t in "abcd"]}]
    (sweep / "1" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_run(sweep / "11", ["sweep=lora_rank_lr", "experiment=demo", "lora.rank=8", "train.lr=0.001"],
               "completed", [3.0, 1.0], {"train": 0.8, "eval": 0.75, "paraphrase": 0.5})  # a second run of a cell
    assert main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "A heatmap per tier over `lora.rank` × `train.lr`" in report and "](recall_heatmaps.png)" in report
    meta = Image.open(sweep / "recall_heatmaps.png").text
    assert meta["Title"] == "final MC recall per tier over lora.rank × train.lr (chance 0.25)"
    cells = meta["Description"].split("; ")
    assert "eval: lora.rank=8 train.lr=0.0001: 0.85 [0.70, 0.93] n = 40" in cells
    assert "eval: lora.rank=8 train.lr=0.001: 0.85 [0.60, 1.00] n = 40 ×2" in cells  # 0.95 and 0.75: their span
    assert "paraphrase: lora.rank=32 train.lr=0.0001: diverged" in cells
    assert "train: lora.rank=64 train.lr=0.001: running" in cells


def test_a_cell_of_one_question_is_pale_whatever_its_recall(tmp_path: Path) -> None:
    """The interval, from the summary or else Wilson's on n, fades the cell: 1 of 1 right is no confident 1.00."""
    _write_run(tmp_path / "one", [], "completed", [1.0], {"eval": 1.0})
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    del summary["recall/eval/mc_acc_low"], summary["recall/eval/mc_acc_high"]
    (tmp_path / "one" / "summary.json").write_text(json.dumps({**summary, "recall/eval/n": 1}))
    _write_run(tmp_path / "forty", [], "completed", [1.0], {"eval": 0.85})
    one, forty = (_cell(find_runs(tmp_path / name), "eval") for name in ("one", "forty"))
    assert one.text == "1.00\n[0.21, 1.00]\nn = 1" and one.strength < 0.3
    assert forty.text == "0.85\n[0.70, 0.93]\nn = 40" and forty.strength > 0.7


def test_a_single_run_dir_without_hydra_is_a_report_of_one(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "train/loss": 0.4}))
    assert main([str(run)]) == 0
    rows = _table_rows((run / "report.md").read_text())
    assert rows["demo"][1:5] == ["#1", "–", "completed", "0.4"]


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
    assert row[1] == "best" and row[4] == "40 questions" and row[5] == f"{best_right - runner_right} / 0"
    assert row[7] == ("yes" if clear else "no")


def test_the_csv_has_one_row_per_run_step_tier_and_figure_with_the_swept_parameters(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    with (sweep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # logger.name, paths.runs_dir and hydra.job.name differ per job too, but say where a run ran: no columns
    assert list(rows[0]) == ["run", "config", "status", "lora.rank", "train.lr", "step", "tier", "figure", "value"]
    # runs 0 and 1 have recall (3 tiers × 8 figures, at their last step 4); the diverged, failed and running none
    assert len(rows) == 2 * 3 * 8 and {r["run"] for r in rows} == {"0", "1"}
    assert {(r["step"], r["figure"]) for r in rows if r["tier"] == "eval" and r["run"] == "1"} == {
        ("4", f) for f in ("mc_acc", "mc_acc_low", "mc_acc_high", "best_mc_acc", "baseline_mc_acc", "delta",
                           "p_value", "n")}
    (eval_1,) = [r for r in rows if r["run"] == "1" and r["tier"] == "eval" and r["figure"] == "mc_acc"]
    assert eval_1 == {"run": "1", "config": "#2", "status": "completed", "lora.rank": "8", "train.lr": "0.001",
                      "step": "4", "tier": "eval", "figure": "mc_acc", "value": "0.95"}
    report = (sweep / "report.md").read_text()
    assert "Swept parameters: `lora.rank`, `train.lr`" in report and "logger.name" not in report
    assert "Common overrides: `sweep=lora_rank_lr`, `experiment=demo`" in report  # not the launcher's settings


def test_several_folders_and_symlinked_runs_are_one_report(sweep: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_sweep"
    _write_run(other / "0", ["sweep=lora_rank_lr", "experiment=demo", "lora.rank=128", "train.lr=0.001"],
               "completed", [3.0, 1.0], {"train": 0.7, "eval": 0.6, "paraphrase": 0.3})
    links = tmp_path / "picked"
    links.mkdir()
    (links / "best_of_other").symlink_to(other / "0", target_is_directory=True)
    (links / "again").symlink_to(sweep / "1", target_is_directory=True)  # also reached through `sweep`: once
    (links / "loop").symlink_to(links, target_is_directory=True)
    out = tmp_path / "combined"
    assert main([str(sweep), str(links), "--out", str(out)]) == 0
    with (out / "results.csv").open() as f:
        runs = {r["run"]: r for r in csv.DictReader(f)}
    assert set(runs) == {f"{sweep.name}/0", f"{sweep.name}/1", "picked/best_of_other"}
    assert runs["picked/best_of_other"]["lora.rank"] == "128"
    rows = _table_rows((out / "report.md").read_text())
    assert "6 runs: 3 completed" in (out / "report.md").read_text() and "picked/best_of_other" in rows
    assert not (sweep / "report.md").exists()


def _halves_run(run_dir: Path, rank: int, tune: int, test: int, null: int, n: int = 20) -> None:
    """A run of `sweep=lora_rank_lr` style whose eval tier is split: `tune` of the tuning half's questions right,
    `test` of the test half's, `null` of the never-trained unseen_facts tier's."""
    recall = {"eval_tune": tune / n, "eval_test": test / n, "unseen_facts": null / n}
    _write_run(run_dir, [f"lora.rank={rank}", "logger=none"], "completed", [2.0, 1.0], recall)
    rows = [{"step": 2, "qid": f"{tier}{i}", "tier": tier, "cluster": f"{tier}{i}", "mc_correct": i < right,
             **({"half": half} if half else {})}
            for tier, half, right in (("eval", "tune", tune), ("eval", "test", test), ("unseen_facts", None, null))
            for i in range(n)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_winner_is_chosen_on_eval_tune_quoted_on_eval_test_and_never_named_on_the_null(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _halves_run(tmp_path / "0", 2, tune=10, test=15, null=20)  # best on the test half and on the null: not chosen
    _halves_run(tmp_path / "1", 4, tune=19, test=12, null=2)  # best on the tuning half: the winner
    _halves_run(tmp_path / "2", 8, tune=5, test=5, null=5)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Which config won")[1].split("\n## ")[0]
    assert "Chosen on `eval_tune` and quoted on `eval_test`" in section
    rows = {r[0]: r for r in _table_rows(section).values()}
    assert set(rows) == {"tier", "eval_tune", "eval_test"}  # no winner on unseen_facts
    assert rows["eval_tune"][1:4] == ["chosen on", "`lora.rank=4` 0.950", "`lora.rank=2` 0.500"]
    assert rows["eval_test"][1:4] == ["quoted on", "`lora.rank=4` 0.600", "`lora.rank=2` 0.750"]
    assert rows["eval_test"][4:6] == ["20 questions", "0 / 3"] and rows["eval_test"][7] == "no"
    assert "Quoted on **eval_test**: `lora.rank=4` reads 0.600" in section
    printed = capsys.readouterr().out
    table = {line.split()[0]: line.split() for line in printed.split("\n\n")[1].splitlines()[2:] if line.strip()}
    assert table["eval_tune"][3] == "0.95*" and table["eval_test"][3] == "0.60*" and "*" not in "".join(
        table["unseen_facts"])
    assert "`logger`" not in report and "Swept parameters: `lora.rank`" in report  # logger=none: not a parameter


def test_without_halves_the_winner_is_chosen_on_the_objective_tier(tmp_path: Path) -> None:
    for job, (rank, eval_acc, para) in enumerate([(2, 0.9, 0.3), (4, 0.5, 0.6)]):
        _write_run(tmp_path / str(job), [f"lora.rank={rank}"], "completed", [2.0, 1.0],
                   {"eval": eval_acc, "paraphrase": para, "unseen_facts": 0.95})
        (tmp_path / str(job) / ".hydra" / "config.yaml").write_text(
            "objective: {metric: recall/paraphrase/mc_acc, mode: max}\n")
    assert main([str(tmp_path)]) == 0
    section = (tmp_path / "report.md").read_text().split("## Which config won")[1].split("\n## ")[0]
    assert "Chosen on `paraphrase`, the tier of `objective.metric`" in section
    assert {r[0] for r in _table_rows(section).values()} == {"tier", "paraphrase"}
