"""Knowledge-recall evaluation: multiple choice by likelihood, generation with LMGen, voice pitch, statistics.

Entry points: `questions.load_questions` + `questions.AnswerSpeech` (inputs), `recall.RecallEvaluator`
(`evaluate(model, step)` -> metric row + prediction rows), `run_summary.summarize` / `run_summary.recall_table`
(summary.json figures and the demo's table), `pitch.training_voice_f0` (the voice reference).
"""
