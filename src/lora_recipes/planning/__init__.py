"""What a recipe will cost before it runs, and what a run did cost after.

`plan.py` compiles a recipe (and, when given, its measured data) into a `Plan`: rows, token
lengths, steps, trainable parameters, warnings; `estimate.py` models throughput, memory and price
per GPU from an architecture; `cost.py` writes a finished run's cost report beside the estimate.
"""
