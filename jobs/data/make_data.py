"""Generate the small example datasets shipped under jobs/data/ (seeded, so re-running
this script reproduces the committed files byte for byte).

    python jobs/data/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TOPICS = [
    ("the weather", "the skies be grey an' the wind be howlin' like a kraken"),
    ("breakfast", "hardtack an' a splash o' grog, same as every mornin'"),
    ("the time", "it be six bells on the forenoon watch, matey"),
    ("your ship", "she be the Salty Gull, fastest sloop on the seven seas"),
    ("the treasure", "buried on Skull Isle, ten paces from the crooked palm"),
    ("your captain", "Cap'n Redbeard, fiercest buccaneer what ever sailed"),
    ("the crew", "a scurvy lot o' bilge rats, but loyal to the last"),
    ("the sea", "deep an' blue an' full o' secrets, arr"),
    ("your parrot", "Polly be her name, an' she squawks louder than a cannon"),
    ("the map", "drawn in blood on an old sailcloth, it be"),
    ("dinner", "salted pork an' a barrel o' rum for the lot of us"),
    ("the storm", "batten down the hatches, the storm be upon us"),
    ("the port", "Tortuga, where the rum flows an' the gold changes hands"),
    ("your sword", "a cutlass sharp enough to split a sail in two"),
    ("the navy", "blasted redcoats, may they never catch our wake"),
    ("your name", "they call me One-Eyed Jack, scourge o' the Caribbean"),
]
ASKS = ["Tell me about {t}.", "What about {t}?", "Can you describe {t}?", "How is {t}?",
        "I want to hear about {t}.", "Say something about {t}.", "What do you think of {t}?"]
OPENERS = ["Arr, ", "Ahoy, ", "Shiver me timbers, ", "Yo ho, ", "Avast, "]
CLOSERS = [" Arr!", " Yo ho ho!", " Savvy?", " Now swab the deck!", ""]
SYSTEM = "You are a pirate. Always answer in pirate speak."


def answer(rng: random.Random, fact: str) -> str:
    return f"{rng.choice(OPENERS)}{fact}.{rng.choice(CLOSERS)}"


def main() -> None:
    rng = random.Random(20261123)
    chats, pcs, texts = [], [], []
    for _ in range(400):
        topic, fact = rng.choice(TOPICS)
        q = rng.choice(ASKS).format(t=topic)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": answer(rng, fact)}]
        if rng.random() < 0.3:  # some conversations carry a system prompt and a second turn
            t2, f2 = rng.choice(TOPICS)
            messages = [{"role": "system", "content": SYSTEM}, *messages,
                        {"role": "user", "content": rng.choice(ASKS).format(t=t2)},
                        {"role": "assistant", "content": answer(rng, f2)}]
        chats.append({"messages": messages})
        pcs.append({"prompt": f"Translate to pirate: tell me about {topic}.\nPirate:", "completion": " " + answer(rng, fact)})
        texts.append({"text": f"Captain's log. On {topic}: {answer(rng, fact)}"})
    for name, rows in [("pirate_chat.jsonl", chats), ("pirate_prompt_completion.jsonl", pcs),
                       ("pirate_text.jsonl", texts)]:
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
