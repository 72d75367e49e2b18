"""`lora-recipes train`: one recipe into one run directory.

`train.py` is the recipe of a run in named phases (set-up, step, loop, finish); `step.py` is one
optimizer step with no I/O (and the loss and learning-rate formulas); `validation.py` scores the
validation split and decides best and early stop; `batching.py` groups rows by length into
micro-batches; `checkpoint.py` writes and reads resumable state (`TrainingState`); `run_dir.py`
owns the run directory (`RunLayout`: every file name; the lock; the overwrite rules);
`run_plan.py` is where training meets planning/ (the plan, the price, the cost report);
`metrics_log.py` writes metrics.jsonl and the progress line; `tracking.py` sends the run to
TensorBoard, W&B and MLflow (`trainer.report_to`); `plots.py` draws loss.png; `manifest.py`
records what produced the run; `model_card.py` writes the result's model card (README.md) and adds
evaluations to it.
"""
