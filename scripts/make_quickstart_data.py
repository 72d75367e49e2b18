"""Generate the quickstart data set: shop orders written as free text, to be turned into JSON.

    "Could you send 3 large blue mugs to Leeds?"  ->  {"item": "mug", "quantity": 3, "size": "large", "color": "blue", "city": "Leeds"}

The task is one a small base model cannot do from the prompt alone (it does not know the exact
keys, value forms and order) and a LoRA adapter learns in a few minutes: the LoRA Land effect on a
laptop. Everything here is made up by this script from its own word lists, so the data is clean to
redistribute. The output is deterministic: `--check` verifies the shipped files are what the script
writes.

    python scripts/make_quickstart_data.py                 # (re)write recipes/data/quickstart/*.jsonl
    python scripts/make_quickstart_data.py --check         # exit 1 if the shipped files differ
    python scripts/make_quickstart_data.py --output DIR    # write (or --check) another folder
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
SIZES = {"train": 2000, "validation": 200, "test": 200}
SEED = 20241201

ITEMS = {
    "mug": "mugs", "t-shirt": "t-shirts", "notebook": "notebooks", "backpack": "backpacks", "umbrella": "umbrellas",
    "water bottle": "water bottles", "desk lamp": "desk lamps", "hoodie": "hoodies", "scarf": "scarves",
    "phone case": "phone cases", "pillow": "pillows", "towel": "towels", "candle": "candles", "cap": "caps",
    "tote bag": "tote bags", "poster": "posters", "sock pack": "sock packs", "teapot": "teapots",
    "cutting board": "cutting boards", "plant pot": "plant pots",
}  # fmt: skip
COLORS = ["red", "blue", "green", "black", "white", "yellow", "orange", "purple", "grey", "pink", "navy", "teal"]
SIZES_WORDS = ["small", "medium", "large", "extra large"]
CITIES = [
    "Leeds", "Lyon", "Porto", "Ghent", "Bergen", "Krakow", "Seville", "Utrecht", "Turin", "Graz", "Aarhus",
    "Cork", "Bilbao", "Basel", "Tampere", "Brno", "Malaga", "Bristol", "Dresden", "Nantes",
]  # fmt: skip
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]

TEMPLATES = [
    "Could you send {q} {size} {color} {items} to {city}?",
    "Hi! I'd like to order {q} {color} {items}, size {size}, delivered to {city}.",
    "Please ship {q} {items} in {color} ({size}) to my address in {city}.",
    "I need {q} {size} {items}, {color} if possible. Shipping to {city}.",
    "Order for {city}: {q} x {items}, colour {color}, size {size}.",
    "Can I get {q} {color} {items} in {size}? I live in {city}.",
    "hello, {q} {size} {color} {items} please, deliver to {city} thanks",
    "We want {q} {items} for the office in {city} - {color}, {size}.",
    "Send {city} {q} {size} {items}. Colour: {color}.",
    "My order: {q} {color} {items} (size {size}), to be delivered in {city}.",
    "Is it possible to have {q} {items} shipped to {city}? {color}, {size} please.",
    "{q} {size} {color} {items} to {city}, as soon as you can.",
]


def one_order(rng: random.Random) -> dict[str, object]:
    item = rng.choice(sorted(ITEMS))
    quantity = rng.randint(1, 12)
    color = rng.choice(COLORS)
    size = rng.choice(SIZES_WORDS)
    city = rng.choice(CITIES)
    spoken = NUMBER_WORDS[quantity - 1] if rng.random() < 0.4 else str(quantity)
    noun = item if quantity == 1 else ITEMS[item]
    if quantity == 1 and rng.random() < 0.5:
        spoken = "a"
    text = rng.choice(TEMPLATES).format(q=spoken, size=size, color=color, items=noun, city=city)
    order = {"item": item, "quantity": quantity, "size": size, "color": color, "city": city}
    return {"text": text, "order": json.dumps(order)}


def generate() -> dict[str, list[dict[str, object]]]:
    """Disjoint splits: a message text appears in at most one split."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, object]]] = {}
    for split, size in SIZES.items():
        rows: list[dict[str, object]] = []
        while len(rows) < size:
            row = one_order(rng)
            if row["text"] in seen:
                continue
            seen.add(str(row["text"]))
            rows.append({"id": f"{split}-{len(rows)}", **row})
        splits[split] = rows
    return splits


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify the shipped files instead of writing them")
    parser.add_argument("--output", type=Path, default=OUT, help="folder of the split files (default: the shipped one)")
    args = parser.parse_args()
    out: Path = args.output
    splits = generate()
    if args.check:
        stale = [s for s, rows in splits.items() if not (out / f"{s}.jsonl").is_file()
                 or (out / f"{s}.jsonl").read_text(encoding="utf-8") != render(rows)]  # fmt: skip
        if stale:
            print(f"stale quickstart data: {', '.join(stale)} (run scripts/make_quickstart_data.py)", file=sys.stderr)
            return 1
        print("quickstart data is up to date")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        tmp = out / f".{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            handle.write(render(rows))
        tmp.replace(out / f"{split}.jsonl")
        print(f"wrote {len(rows)} rows to {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
