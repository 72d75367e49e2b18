"""What a recipe will cost before it runs, and what a run did cost after.

`plan.py` compiles a recipe (and, when given, its measured data) into a typed `Plan`
(`sections.py`: rows, token lengths, steps, trainable parameters, the estimate, warnings; its
`to_json()` is plan.json's one layout), which `render.py` prints as text; `estimate.py` models
throughput, memory and price of a workload on a GPU from an architecture, so `plan.estimate_on`
re-prices a plan on another GPU without rebuilding it; `cost.py` writes a finished run's cost
report beside the estimate.
"""
