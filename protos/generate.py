"""Regenerate the committed Python code for every .proto in this folder.

    python -m protos.generate            # rewrite protos/*_pb2*.py(i) in place
    python -m protos.generate --check    # exit 1 if the committed code is stale (CI runs this)

The generated modules import each other as `protos.<name>_pb2`, so they are compiled with the
repository root as the include path.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
#: Protos whose symbols another installed package also registers (tritonclient ships its own
#: `inference.*` messages). Their generated code uses a private descriptor pool, so both can
#: be imported in one process; the default pool would refuse the duplicate symbols.
PRIVATE_POOL_PROTOS = frozenset({"grpc_service"})
_DEFAULT_POOL_LINE = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_LINE = (
    "_PRIVATE_POOL = _descriptor_pool.DescriptorPool()  # see PRIVATE_POOL_PROTOS in protos/generate.py\n"
    "DESCRIPTOR = _PRIVATE_POOL.AddSerializedFile("
)


def use_private_pool(pb2_path: Path) -> None:
    """Rewrite a generated *_pb2.py to register its file in its own descriptor pool."""
    text = pb2_path.read_text()
    if text.count(_DEFAULT_POOL_LINE) != 1:
        raise SystemExit(f"{pb2_path.name}: generated code changed shape; cannot move it to a private pool")
    pb2_path.write_text(text.replace(_DEFAULT_POOL_LINE, _PRIVATE_POOL_LINE))


def generate(out_root: Path) -> list[Path]:
    """Compile every proto into `out_root/protos/`; return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        rel = proto.relative_to(ROOT)
        args = [
            "protoc",
            f"-I{ROOT}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {rel}")
        stem = proto.stem
        if stem in PRIVATE_POOL_PROTOS:
            use_private_pool(out_root / "protos" / f"{stem}_pb2.py")
        written += [out_root / "protos" / f"{stem}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if anything would change")
    args = parser.parse_args(argv)
    import os

    os.chdir(ROOT)
    if not args.check:
        for path in generate(ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            path.name
            for path in generate(Path(tmp))
            if not (PROTO_DIR / path.name).exists() or not filecmp.cmp(path, PROTO_DIR / path.name, shallow=False)
        ]
    if stale:
        print("generated proto code is stale; run `python -m protos.generate`: " + ", ".join(stale))
        return 1
    print("generated proto code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
