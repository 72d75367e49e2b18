"""From a recipe and its data to what training and evaluation consume.

    source files / hub dataset -> rows -> derived columns -> splits -> prompts + targets
      -> tokenized, cut to the max length (training), or the fixed evaluation subset (evaluation)

`pipeline.py` runs it (`prepare_training_data`, `evaluation_examples`, `build_prompter`, and
`plan_data` for `lora-recipes plan`); `types.py` holds the shapes that cross into training and
evaluation. One job per module: `sources.py` reads files and hub datasets, `columns.py` computes
derived columns, `splits.py` carves and hashes splits, `prompts.py` renders prompts and targets,
`chat.py` wraps them in a chat template's turns (`prompt.chat_template`), `tokens.py` tokenizes and cuts, `cache.py` stores tokenized splits, `approx.py` counts tokens when
the tokenizer cannot be had, `hub.py` asks whether the hub is reachable, and `problems.py` states
what bad data is an error and what is skipped and counted.
"""
