from lora_recipes.cli import run

run()
