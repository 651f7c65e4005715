"""`edgecascade demo --make-v2 DIR`: a second version of the demo's edge model, to try
`edgecascade update push` with.

The copy keeps the architecture and the INT8 weights; only its float bias vectors move a
little (seeded noise), so the delta between the two is small and real, and the new version
still classifies digits about as well. model.json and policy.json get the new version.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from shared.errors import ConfigError
from shared.model_card import POLICY_FILE, load_card, save_card
from shared.policy import load_policy, save_policy

BIAS_NOISE = 0.05


def make_next_version(base_dir: Path, out_dir: Path, *, version: Optional[int] = None, seed: int = 2) -> Path:
    """Write a copy of the ONNX bundle `base_dir` with nudged biases and a higher version to `out_dir`."""
    import onnx
    from onnx import numpy_helper

    card = load_card(base_dir)
    new_version = version if version is not None else card.version + 1
    if new_version <= card.version:
        raise ConfigError(f"--make-v2: the new version must be above {card.version}, got {new_version}")
    if card.runtime != "onnx":
        raise ConfigError(f"--make-v2: {base_dir} is a {card.runtime!r} bundle; only ONNX bundles are supported")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--make-v2: {out_dir} exists and is not empty; choose a new directory")
    try:
        shutil.copytree(base_dir, out_dir, dirs_exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--make-v2: cannot write {out_dir}: {exc.strerror or exc}") from None
    model = onnx.load(str(out_dir / card.file))
    rng = np.random.default_rng(seed)
    nudged = 0
    for index, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.ndim == 1 and values.size > 1:
            noisy = (values + rng.normal(0.0, BIAS_NOISE, values.shape)).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
            nudged += 1
    if not nudged:
        raise ConfigError(f"--make-v2: {base_dir / card.file} has no float bias vector to change")
    onnx.save(model, str(out_dir / card.file))
    save_card(out_dir, card.model_copy(update={"version": new_version}))
    policy = load_policy(base_dir / POLICY_FILE).spec
    save_policy(out_dir, policy.model_copy(update={"model_version": new_version}))
    return out_dir
