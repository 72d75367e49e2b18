"""lora-recipes: declarative QLoRA fine-tuning, one YAML recipe per task."""

__version__ = "0.1.0"
