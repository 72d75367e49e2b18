"""`lora-recipes train`: one recipe into one run directory.

`train.py` is the recipe of a run in named phases (set-up, step, loop, finish); `batching.py`
groups rows by length into micro-batches; `checkpoint.py` writes and reads resumable state;
`run_dir.py` owns the run directory (`RunLayout`: every file name; the lock; the overwrite rules);
`metrics_log.py` writes metrics.jsonl and the progress line; `plots.py` draws loss.png;
`manifest.py` records what produced the run.
"""
