"""Run tracking: metrics.jsonl + summary.json in every run directory, mirrored to W&B when `logger=wandb`.

`contract` names the keys of those files; `tracker.Tracker` writes them; `runs` reads them back for the report.
The package itself imports nothing: `secrets` is read on every command line, before any run.
"""
