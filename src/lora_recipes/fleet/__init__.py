"""Fleets: many recipes trained, scored and compared at once, LoRA Land style.

    recipes/*.yaml --plan--> one row per recipe and the totals (plan.py)
                   --fleet-> one job per recipe: `train` then `evaluate`, each in a child process,
                             on this machine or a Ray cluster -> DIR/<name>/ run directories
                   --------> DIR/fleet.json (who is where) and DIR/leaderboard.{md,json,png,html}

One job per module. `recipes.py` loads the fleet's recipes (an invalid one is kept with its
errors) and `datamap.py` says which data each trains on (--data NAME=PATH, --data-map, --data-root).
`job.py` is the unit of work, the same on every backend: it reads the run directory to decide
skip, resume or start, runs `train` and `evaluate` through `child.py` (a launcher that ties the
child's life to its parent's) and writes the child's output to the run's fleet.log.
`local_backend.py` runs jobs in threads, one per GPU (or --parallel on CPUs); `ray_backend.py`
runs them as Ray tasks. `driver.py` queues, retries and stops them; `progress.py` prints their
status lines; `runstate.py` reads a run directory's phase and progress; `state.py` keeps
fleet.json and the lock that keeps one driver per fleet; `status.py` renders `fleet status`.
`leaderboard.py` builds the tasks-by-systems table from the run directories (markdown and JSON),
`chart.py` draws its PNG, `html.py` writes the self-contained page, and `serving.py` gives the
commands that serve every adapter from one GPU.

Nothing here imports torch: the driver only starts processes and reads files.
"""
