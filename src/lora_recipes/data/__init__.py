"""From a recipe and its data to what training and evaluation consume.

    source files / hub dataset -> rows -> derived columns -> splits -> prompts + targets
      -> tokenized, cut to the max length (training), or the fixed evaluation subset (evaluation)

`types.py` holds the shapes that cross into training and evaluation.
"""
