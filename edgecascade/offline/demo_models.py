"""The default model pair for `edgecascade demo`, built once and cached.

    $EDGECASCADE_CACHE_DIR (default ~/.cache/edgecascade)/demo-v1/
      demo.json          what was built: split sizes, accuracies, policy, build time, file sizes
      edge/              runtime "onnx" bundle: model.json, model.onnx (INT8), policy.json
      cloud/             runtime "torch_mlp" bundle: model.json, weights.safetensors
      calibration.npz    X float32 [350, 64], y int64 [350]
      test.npz           X float32 [450, 64], y int64 [450]  (what the demo replays)

The first call builds it (about 10 s, see `edgecascade.offline.demo_build`) in a hidden sibling
directory and renames it into place, so an interrupted build never leaves a half cache.
Later calls only read demo.json, and import neither torch nor scikit-learn.

Ctrl-C (SIGINT) during a build, from the main thread, always ends it with KeyboardInterrupt
and removes the build directory: a Ctrl-C that a library swallowed is raised again after the
build step it landed in, and one during the swap-in or the cleanup waits until that is done.

Test-only: EDGECASCADE_TEST_PAUSE_AT=demo-<step> (a step of `demo_build.BUILD_STEPS`, or
`built`: demo.json written, just before the swap-in) makes the build stop for good at that
point, in Python, so a test can interrupt it there; `demo-<step>:<seconds>` pauses only that
long. The same variable drives the updater's pauses (`edge_agent.updater`). Never set it in
production.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Name of the cache directory; bump it when the build changes what it produces.
DEMO_FORMAT = "demo-v1"
CACHE_ENV = "EDGECASCADE_CACHE_DIR"
INFO_FILE = "demo.json"
_REQUIRED = ("edge/model.json", "edge/model.onnx", "edge/policy.json", "cloud/model.json", "cloud/weights.safetensors",
             "calibration.npz", "test.npz")
#: Top-level packages the build needs beyond the edge install.
_BUILD_MODULES = {"torch", "sklearn", "safetensors", "onnx", "onnxruntime", "scipy"}
#: Build directories older than this are leftovers of a killed build and are removed.
_STALE_BUILD_S = 3600
PAUSE_ENV = "EDGECASCADE_TEST_PAUSE_AT"


@dataclass(frozen=True)
class Split:
    """Inputs X float32 [n, 64] (pixel / 16) and digit labels y int64 [n]."""

    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DemoModels:
    """A built demo cache: where the two bundles are, and what the build measured."""

    root: Path
    info: dict[str, Any]

    @property
    def edge_dir(self) -> Path:
        return self.root / "edge"

    @property
    def cloud_dir(self) -> Path:
        return self.root / "cloud"

    def test_split(self) -> Split:
        """The held-out images the demo replays (never used for training or thresholds)."""
        return load_split(self.root / "test.npz")

    def calibration_split(self) -> Split:
        """Held-out images for choosing the deferral threshold."""
        return load_split(self.root / "calibration.npz")

    @cached_property
    def _test(self) -> Split:
        return self.test_split()

    @property
    def test_inputs(self) -> np.ndarray:
        """Test split inputs, float32 [450, 64]; iterate it for one request per row."""
        return self._test.X

    @property
    def test_labels(self) -> np.ndarray:
        """Test split digits, int64 [450]."""
        return self._test.y


def default_cache_root() -> Path:
    """$EDGECASCADE_CACHE_DIR, or ~/.cache/edgecascade."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgecascade"


def demo_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the demo pair lives: `<cache_dir or default_cache_root()>/demo-v1`."""
    return Path(cache_dir if cache_dir is not None else default_cache_root()).expanduser() / DEMO_FORMAT


def ensure_demo_models(cache_dir: str | Path | None = None, *, rebuild: bool = False) -> DemoModels:
    """The demo pair under `cache_dir` (see `demo_dir`), building it the first time.

    `rebuild=True` builds afresh and swaps the new cache in. A cache that exists but is
    incomplete (files deleted by hand) is a ConfigError naming it, not silently rebuilt.
    """
    root = demo_dir(cache_dir)
    if root.exists() and not rebuild:
        return _open(root)
    _build_into(root, replace=rebuild)
    return _open(root)


def load_split(path: str | Path) -> Split:
    path = Path(path)
    try:
        with np.load(path) as data:
            X, y = data["X"], data["y"]
    except FileNotFoundError:
        raise ConfigError(f"split file {path} not found") from None
    except (KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"split file {path} is not a demo split (arrays X and y): {exc}") from None
    if X.dtype != np.float32 or X.ndim != 2 or y.shape != (len(X),):
        raise ConfigError(f"split file {path}: want X float32 [n, d] and y [n], got X {X.dtype} {list(X.shape)}, y {list(y.shape)}")
    return Split(X, y)


def _open(root: Path) -> DemoModels:
    info_path = root / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"demo cache {root} is unreadable ({exc}); delete it to rebuild") from None
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if info.get("format") != DEMO_FORMAT or missing:
        raise ConfigError(f"demo cache {root} is incomplete (missing {missing or [INFO_FILE]}); delete it to rebuild")
    return DemoModels(root=root, info=info)


def _build_into(root: Path, *, replace: bool) -> None:
    building = root.parent / f".{root.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("building the demo models in %s (first run only)", root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(root)
    except OSError as exc:
        raise ConfigError(f"cannot create the demo cache in {root.parent}: {exc}; set {CACHE_ENV} elsewhere") from None
    with _CtrlC() as ctrl_c:
        try:
            try:
                building.mkdir()
            except OSError as exc:
                raise ConfigError(f"cannot create the demo cache in {root.parent}: {exc}; set {CACHE_ENV} elsewhere") from None

            def step_done(step: str) -> None:
                ctrl_c.check()
                _pause_point(f"demo-{step}")

            with ctrl_c.live():
                try:
                    from edgecascade.offline.demo_build import build_demo

                    facts = build_demo(building, step_done)  # imports torch, scikit-learn and the ONNX quantizer
                except ModuleNotFoundError as exc:
                    if exc.name not in _BUILD_MODULES:
                        raise
                    raise ConfigError(
                        f"building the demo models needs {exc.name!r}, which is not installed; "
                        "install the cloud extra (pip install 'edgecascade[cloud]')"
                    ) from None
                info = {"format": DEMO_FORMAT, "created_unix_s": round(time.time(), 3), **facts}
                (building / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
                step_done("built")
            _swap_in(building, root, replace=replace)
        finally:
            _discard(building)
    log.info("demo models ready in %s (%.1f s)", root, info["build_s"]["total"])


class _CtrlC:
    """SIGINT during one build, in the main thread (elsewhere it changes nothing).

    Outside `live()` (creating the build directory, the swap-in, the cleanup) a Ctrl-C is only
    remembered, and raised as KeyboardInterrupt when `live()` starts or the build has ended, so
    none of these is cut short. Inside `live()` it raises KeyboardInterrupt at once, as Python's
    default handler does, and `check()` raises it again where a library caught and dropped it."""

    def __init__(self) -> None:
        self.seen = False
        self._pending = False
        self._live = False
        self._installed = False

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._pending and exc_type is None:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: object) -> None:
        self.seen = True
        if not self._live:
            self._pending = True
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came (and, since we got here, was swallowed)."""
        if self.seen:
            log.warning("the demo build was interrupted (Ctrl-C); stopping")
            raise KeyboardInterrupt

    @contextmanager
    def live(self) -> Iterator[None]:
        self._live = True
        try:
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt
            yield
        finally:
            self._live = False


def _pause_point(step: str) -> None:
    """Test-only hook (see the module docstring): `<step>` waits for good, `<step>:<seconds>`
    waits that long and goes on. SIGINT ends the wait at once."""
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != step:
        return
    log.warning("TEST PAUSE at %s (%s is set) for %s", step, PAUSE_ENV, f"{seconds} s" if seconds else "good")
    if seconds:
        time.sleep(float(seconds))
        return
    while True:
        time.sleep(3600)


def _discard(building: Path) -> None:
    """Remove a build directory (retrying briefly, in case it is still being written to)."""
    for _ in range(50):
        shutil.rmtree(building, ignore_errors=True)
        if not building.exists():
            return
        time.sleep(0.1)
    log.warning("could not remove the demo build directory %s; it is removed by a build after %d s",
                building, _STALE_BUILD_S)


def _swap_in(building: Path, root: Path, *, replace: bool) -> None:
    """Rename the finished build to `root`. With `replace`, an existing cache is swapped out;
    without it, a cache another process finished meanwhile is kept and ours is left to discard."""
    old = None
    if replace and root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        root.rename(old)
    try:
        building.rename(root)
    except OSError:
        if not root.exists():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for leftover in root.parent.glob(f".{root.name}.*-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass

