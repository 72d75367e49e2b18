"""Base models: where they come from, what they look like, and how they are loaded.

`source.py` turns a recipe's `base_model` into a `ModelSource` (hub id, local folder, or a GGUF
file inside a package) and its loading options, and names the base portably (`portable_base_id`,
`BaseIdentity`: the hub id a server elsewhere loads, never a path on this machine);
`architectures.py` knows the shapes of known architectures without loading weights (for plans and
estimates); `loading.py` is the only module that builds models (transformers, peft, bitsandbytes):
tokenizer, 4-bit base, LoRA adapters, optimizer, saving; `export.py` merges an adapter into its
unquantized base and writes one plain model folder; `tiny.py` builds a tiny random Mistral and
tokenizer in-process for tests.
"""
