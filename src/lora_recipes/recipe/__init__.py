"""A recipe file, read and checked: the contract every other layer consumes.

    recipe.yaml --yamlio (YAML 1.2, positions kept)--> mapping --checks (schema) + rules (cross-field)
      --schema (defaults filled from recipe.schema.json)--> types.Recipe (typed, frozen)

`loader.py` runs it (`load_recipe`, `LoadedRecipe`); `recipe.schema.json` is the contract and the
one place defaults live (`schema.py` reads it); `types.py` holds the typed recipe; `checks.py`
turns schema errors into messages with places; `rules.py` is the registry of cross-field rules;
`yamlio.py` parses YAML with positions and refuses what is unsafe; `template.py` parses prompt
templates; `serving.py` holds what vLLM and LoRAX accept of an adapter (the serving rules and
`check-adapter` use it). Nothing here imports torch or any other heavy library.
"""
