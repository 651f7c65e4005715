"""A SYNTHETIC intent data set, generated from templates: for tests and for trying the text
pipeline without any outside data. It is not a benchmark of anything real.

    edgecascade data synth --out data/synthetic-intents [--intents 8] [--train-per-intent 60]
                           [--test-per-intent 20] [--out-of-scope 40] [--seed 0]

writes `train.csv` and `test.csv` (`text,category`, the format `edgecascade train` reads) and
a README.md saying what the folder is. Sentences are a template of the intent with its slots
filled, and sometimes a polite opening or closing and a typo; every intent shares the fillers
(amounts, dates, account words), so the words that tell intents apart are the template's,
and a tenth of the sentences are vague ones any intent may produce, so no model is always
right. With
`--out-of-scope N`, N more test sentences come from unrelated topics (weather, cooking,
travel, sport), labelled `out_of_scope`; training never sees them, as with a
confidence-threshold out-of-scope detector. The same seed gives the same files.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Optional

from shared.errors import InvalidInputError

OUT_OF_SCOPE_LABEL = "out_of_scope"

#: intent -> templates; {amount}, {when}, {account}, {card}, {place} are filled from FILLERS.
INTENTS: dict[str, list[str]] = {
    "check_balance": [
        "how much money is in my {account}", "what is the balance of my {account}", "show me my {account} balance",
        "tell me what i have left in my {account}", "balance of {account} {when}", "do i have {amount} in my {account}",
    ],
    "transfer_money": [
        "send {amount} from my {account} to my sister", "transfer {amount} to my {account}",
        "move {amount} between my accounts {when}", "i want to wire {amount} abroad",
        "pay {amount} to my landlord from my {account}", "make a transfer of {amount} {when}",
    ],
    "lost_card": [
        "i lost my {card}", "my {card} was stolen {when}", "i cannot find my {card} anywhere",
        "someone took my {card} in {place}", "block my {card} it is missing", "my {card} is gone what do i do",
    ],
    "card_arrival": [
        "when will my new {card} arrive", "my {card} has not come in the post yet", "i ordered a {card} {when} where is it",
        "how long does delivery of a {card} take", "still waiting for my {card} to be delivered",
        "track the delivery of my {card}",
    ],
    "exchange_rate": [
        "what rate do you use to convert {amount} to euros", "how much is {amount} in dollars",
        "exchange rate for paying in {place}", "what fee do you charge to convert currency {when}",
        "is the exchange rate better {when}", "convert {amount} to yen",
    ],
    "declined_payment": [
        "my payment of {amount} was declined", "why did my {card} get rejected in {place}",
        "the shop in {place} refused my {card}", "payment failed {when} for {amount}",
        "my {card} keeps getting declined", "a purchase of {amount} did not go through",
    ],
    "change_pin": [
        "how do i change the pin of my {card}", "i want a new pin for my {card}", "reset my pin {when}",
        "i forgot the pin of my {card}", "can i pick my own pin", "my pin is blocked after three tries",
    ],
    "refund_request": [
        "i want my {amount} back from the shop in {place}", "how do i get a refund for {amount}",
        "the merchant has not refunded me {when}", "request a refund of {amount}",
        "a refund of {amount} is missing from my {account}", "when will my refund reach my {account}",
    ],
    "open_account": [
        "i want to open a {account}", "how do i sign up for a {account}", "can i open a second {account} {when}",
        "what do i need to open an account in {place}", "start a new {account} for my child", "open a joint {account}",
    ],
    "close_account": [
        "please close my {account}", "i want to cancel my {account} {when}", "how do i shut down my {account}",
        "delete my account and send the {amount} left to me", "terminate my {account}", "end my membership",
    ],
    "top_up": [
        "add {amount} to my {account}", "top up {amount} with my {card}", "my top up of {amount} failed {when}",
        "how do i load money onto my {account}", "can i top up by bank transfer", "put {amount} on my card",
    ],
    "atm_withdrawal": [
        "the atm in {place} kept my {card}", "i took out {amount} but got less", "withdrawal of {amount} at an atm {when}",
        "how much can i withdraw from an atm", "cash machine in {place} charged me a fee", "atm gave me the wrong amount",
    ],
}

FILLERS: dict[str, list[str]] = {
    "amount": ["10 pounds", "$250", "50 euros", "a hundred dollars", "1,000 pounds", "£35", "twenty euros", "€5"],
    "when": ["yesterday", "today", "last week", "this morning", "on monday", "two days ago", "right now", "last month"],
    "account": ["savings account", "current account", "main account", "business account", "account", "joint account"],
    "card": ["card", "debit card", "credit card", "virtual card", "visa card", "mastercard"],
    "place": ["spain", "a supermarket", "london", "the airport", "germany", "a petrol station", "tokyo", "paris"],
}
#: Vague requests any intent may produce (about AMBIGUOUS_SHARE of them): no model can get all right.
AMBIGUOUS_TEMPLATES = [
    "i need help with my {account}", "something is wrong with my {card}", "question about {amount}",
    "can you help me {when}", "there is a problem in {place}", "what happened to my {amount}",
]
AMBIGUOUS_SHARE = 0.1
#: Chance that a word loses one letter (a typo).
TYPO_RATE = 0.04
OPENINGS = ["", "", "", "hi, ", "hello ", "please ", "excuse me, ", "quick question: "]
CLOSINGS = ["", "", "", "?", " please", " thanks", ", thank you", "!"]

#: Queries no intent covers.
OUT_OF_SCOPE_TEMPLATES = [
    "what will the weather be like in {place} {when}", "give me a recipe for {dish}", "who won the {sport} game {when}",
    "book me a flight to {place}", "how tall is the eiffel tower", "play some {music} music",
    "set an alarm for seven", "what is the capital of {place}", "tell me a joke about {dish}",
    "how many calories are in {dish}", "when does the {sport} season start", "translate hello into {language}",
    "recommend a good {music} album", "what time is it in {place}", "how do i boil {dish}",
]
OUT_OF_SCOPE_FILLERS: dict[str, list[str]] = {
    "place": FILLERS["place"], "when": FILLERS["when"],
    "dish": ["pasta", "an egg", "pancakes", "rice", "a curry", "soup"],
    "sport": ["football", "tennis", "cricket", "basketball"],
    "music": ["jazz", "rock", "classical", "pop"],
    "language": ["french", "spanish", "japanese", "german"],
}


def _sentence(template: str, fillers: dict[str, list[str]], rng: random.Random) -> str:
    text = template.format(**{key: rng.choice(values) for key, values in fillers.items()})
    words = [_typo(word, rng) if len(word) > 3 and rng.random() < TYPO_RATE else word for word in text.split(" ")]
    return rng.choice(OPENINGS) + " ".join(words) + rng.choice(CLOSINGS)


def _typo(word: str, rng: random.Random) -> str:
    at = rng.randrange(1, len(word))
    return word[:at] + word[at + 1:]


def _intent_template(templates: list[str], rng: random.Random) -> str:
    return rng.choice(AMBIGUOUS_TEMPLATES if rng.random() < AMBIGUOUS_SHARE else templates)


def generate(*, intents: int = 8, train_per_intent: int = 60, test_per_intent: int = 20, out_of_scope: int = 0,
             seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train rows, test rows) of (text, label); `out_of_scope` test rows labelled OUT_OF_SCOPE_LABEL."""
    if not (2 <= intents <= len(INTENTS)):
        raise InvalidInputError(f"intents must be between 2 and {len(INTENTS)}, got {intents}")
    for name, value in (("train_per_intent", train_per_intent), ("test_per_intent", test_per_intent)):
        if value < 1:
            raise InvalidInputError(f"{name} must be at least 1, got {value}")
    if out_of_scope < 0:
        raise InvalidInputError(f"out_of_scope must be at least 0, got {out_of_scope}")
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label in sorted(INTENTS)[:intents]:
        templates = INTENTS[label]
        train += [(_sentence(_intent_template(templates, rng), FILLERS, rng), label) for _ in range(train_per_intent)]
        test += [(_sentence(_intent_template(templates, rng), FILLERS, rng), label) for _ in range(test_per_intent)]
    test += [(_sentence(rng.choice(OUT_OF_SCOPE_TEMPLATES), OUT_OF_SCOPE_FILLERS, rng), OUT_OF_SCOPE_LABEL)
             for _ in range(out_of_scope)]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "category"))
        writer.writerows(rows)
    return Path(path)


def write_data_dir(out_dir: str | Path, *, seed: int = 0, intents: int = 8, train_per_intent: int = 60,
                   test_per_intent: int = 20, out_of_scope: int = 0, command: Optional[str] = None) -> Path:
    """Write train.csv, test.csv and README.md to `out_dir` (created); return it."""
    out_dir = Path(out_dir)
    train, test = generate(intents=intents, train_per_intent=train_per_intent, test_per_intent=test_per_intent,
                           out_of_scope=out_of_scope, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows(out_dir / "train.csv", train)
    write_rows(out_dir / "test.csv", test)
    (out_dir / "README.md").write_text(
        "# SYNTHETIC intent data (generated, not real)\n\n"
        f"Generated by `edgecascade.offline.synthetic_intents` (seed {seed}): {intents} intents, {train_per_intent} training "
        f"and {test_per_intent} test sentences each, from templates"
        + (f", plus {out_of_scope} out-of-scope test sentences labelled `{OUT_OF_SCOPE_LABEL}`" if out_of_scope else "")
        + ". Only for tests and demonstrations; results on it say nothing about real traffic.\n"
        + (f"\nCommand: `{command}`\n" if command else "")
    )
    return out_dir
