"""The second model slot: build a bundle for an update, load it beside the serving model,
warm it up and check its golden inputs before it may take any request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydantic import ValidationError

from edge_agent.cascade import ActiveModel
from shared.delta.golden import Golden, check_golden
from shared.delta.manifest import Manifest
from shared.errors import BadManifestError, ConfigError, ModelLoadFailedError
from shared.model_card import CARD_FILE, POLICY_FILE, ModelCard
from shared.model_loader import load_model
from shared.policy import DeferralPolicy, PolicyFile, load_policy

WARM_UP_RUNS = 3


def load_slot(bundle_dir: Path, providers: Sequence[str]) -> ActiveModel:
    """Load a bundle and its own policy.json; refuse a policy made for another model."""
    model = load_model(bundle_dir, providers=providers, edge=True)
    policy = load_policy(bundle_dir / POLICY_FILE)
    policy.check_matches(model.card)
    model.load()
    return ActiveModel(model, policy)


def bundle_files(manifest: Manifest, current: ActiveModel) -> tuple[ModelCard, PolicyFile]:
    """model.json and policy.json of the new version: the manifest's, or the serving ones with
    the new version number. Refuses a card or policy that does not fit the manifest."""
    base_card = current.model.card.model_dump(mode="json")
    card_raw = manifest.card if manifest.card is not None else {**base_card, "version": manifest.version, "file": manifest.file}
    try:
        card = ModelCard.model_validate(card_raw)
    except ValidationError as exc:
        raise BadManifestError(f"manifest card: {exc.errors()[0]['msg']}") from None
    if (card.name, card.version, card.file) != (manifest.model_name, manifest.version, manifest.file):
        raise BadManifestError(
            f"manifest card says {card.name!r} v{card.version} file {card.file!r}; the manifest says "
            f"{manifest.model_name!r} v{manifest.version} file {manifest.file!r}"
        )
    base_policy = current.policy.spec.model_dump(mode="json")
    policy_raw = manifest.policy if manifest.policy is not None else {**base_policy, "model_version": manifest.version}
    try:
        policy = PolicyFile.model_validate(policy_raw)
        DeferralPolicy(policy).check_matches(card)
    except ValidationError as exc:
        raise BadManifestError(f"manifest policy: {exc.errors()[0]['msg']}") from None
    except ConfigError as exc:
        raise BadManifestError(f"manifest policy: {exc}") from None
    return card, policy


def write_bundle_files(staging: Path, card: ModelCard, policy: PolicyFile) -> None:
    (staging / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    (staging / POLICY_FILE).write_text(json.dumps(policy.model_dump(mode="json"), indent=2) + "\n")


def prepare_slot(bundle_dir: Path, providers: Sequence[str], golden: Optional[Golden]) -> ActiveModel:
    """Load, warm up, check the golden inputs. Blocking: call it from a thread."""
    try:
        active = load_slot(bundle_dir, providers)
    except ConfigError as exc:
        raise ModelLoadFailedError(f"new model does not load: {exc}") from None
    inputs = [case.model_input() for case in golden.cases] if golden else [_placeholder_input(active.model.card)]
    try:
        for _ in range(WARM_UP_RUNS):
            active.model.predict(inputs)
    except Exception as exc:
        raise ModelLoadFailedError(f"new model fails on warm-up inputs: {type(exc).__name__}: {exc}") from None
    if golden is not None:
        check_golden(golden, active.model.predict)
    return active


def _placeholder_input(card: ModelCard):
    if card.input.kind == "text":
        return "warm up"
    shape = [max(d, 1) for d in card.input.shape]
    return np.zeros(shape, dtype=card.input.dtype)

