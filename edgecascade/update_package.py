"""Build a signed update package from two model bundles (what `edgecascade update push` and
`update rollback` send): the delta of the weights file, the new card and policy, and golden
inputs with the new model's outputs on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.delta.golden import Golden, make_golden
from shared.delta.manifest import DEFAULT_CHUNK_BYTES
from shared.delta.package import DeltaPackage, build_package
from shared.errors import InvalidInputError
from shared.model import ModelInput
from shared.model_card import POLICY_FILE, ModelCard, load_card
from shared.model_loader import load_model
from shared.policy import load_policy

DEFAULT_EXPIRES_IN_S = 7 * 24 * 3600.0
GOLDEN_TEXTS = (
    "I still have not received my new card.",
    "How do I top up my account with a bank transfer?",
    "Why was I charged a fee for this payment?",
    "My transfer to another account failed.",
    "Can I change my PIN at a cash machine?",
    "The exchange rate on my card payment looks wrong.",
    "How long does it take for a top up to show?",
    "I want to close my account.",
)


def golden_inputs(card: ModelCard, count: int, seed: int = 0) -> list[ModelInput]:
    """Deterministic inputs of the model's kind: fixed sentences, or seeded random tensors."""
    if card.input.kind == "text":
        return [GOLDEN_TEXTS[i % len(GOLDEN_TEXTS)] for i in range(count)]
    rng = np.random.default_rng(seed)
    shape = [d if d > 0 else 8 for d in card.input.shape]
    dtype = np.dtype(card.input.dtype)
    if dtype.kind == "f":
        return [rng.standard_normal(shape).astype(dtype) for _ in range(count)]
    return [rng.integers(0, 10, size=shape).astype(dtype) for _ in range(count)]


def golden_for(bundle: Path, count: int, *, atol: float, rtol: float) -> Golden:
    """Golden cases: `count` inputs and what the bundle's model answers on them."""
    model = load_model(bundle, edge=True)
    model.load()
    inputs = [model.check_input(x) for x in golden_inputs(model.card, count)]
    return make_golden(inputs, list(model.predict(inputs)), atol=atol, rtol=rtol)


def package_from_bundles(new_bundle: Path, base_bundle: Path, signing_key: Ed25519PrivateKey, *, rollback: bool = False,
                         expires_in_s: float = DEFAULT_EXPIRES_IN_S, golden_count: int = 8, golden_atol: float = 1e-4,
                         chunk_size: int = DEFAULT_CHUNK_BYTES, now: Optional[float] = None) -> DeltaPackage:
    """The package that turns `base_bundle` (what agents serve) into `new_bundle`."""
    new_card, base_card = load_card(new_bundle), load_card(base_bundle)
    if new_card.name != base_card.name:
        raise InvalidInputError(f"the bundles hold different models: {new_card.name!r} and {base_card.name!r}")
    if new_card.file != base_card.file:
        raise InvalidInputError(f"the bundles name different weights files: {new_card.file!r} and {base_card.file!r}")
    if not rollback and new_card.version <= base_card.version:
        raise InvalidInputError(
            f"new version {new_card.version} is not above the base's {base_card.version}; "
            "agents refuse that unless it is a signed rollback (`edgecascade update rollback`)"
        )
    if rollback and new_card.version >= base_card.version:
        raise InvalidInputError(f"a rollback goes to a lower version; {new_card.version} is not below {base_card.version}")
    policy = load_policy(new_bundle / POLICY_FILE)
    policy.check_matches(new_card)
    golden = golden_for(new_bundle, golden_count, atol=golden_atol, rtol=1e-3) if golden_count > 0 else None
    return build_package(
        base_bundle / base_card.file, new_bundle / new_card.file,
        model_name=new_card.name, version=new_card.version, signing_key=signing_key, expires_in_s=expires_in_s,
        golden=golden, policy=json.loads((new_bundle / POLICY_FILE).read_text()),
        card=new_card.model_dump(mode="json"), rollback=rollback, file_name=base_card.file, chunk_size=chunk_size, now=now,
    )
