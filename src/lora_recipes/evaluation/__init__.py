"""`lora-recipes evaluate` and `predict`: answers from models and endpoints, scored.

`evaluate.py` runs it (systems: adapter, base, endpoints; the fixed subset; resume);
`generation.py` decodes locally in left-padded batches or ranks labels; `endpoints.py` asks
OpenAI-compatible endpoints with retries; `metrics.py` holds the task metrics; `reference.py`
reads LoRA Land's published scores; `table.py` renders the comparison table; `predict.py` applies
a recipe to new rows.
"""
