"""Child process that applies a verified payload to a base file: `python -m shared.delta.apply_worker`.

bsdiff4 holds the GIL while it patches, so the agent never applies in its serving process.
The child re-checks the payload and base hashes it is given (the files could have changed
since the parent checked them), writes the target, fsyncs it, and prints one JSON line:
`{"size": ..., "sha256": ...}` (exit 0), or `{"reason": ..., "message": ...}` (exit 3 for a
rejection, 4 for anything unexpected).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from shared.delta.payload import mapped_file, apply_payload
from shared.errors import CorruptPatchError, UpdateRejectedError, WrongBaseError

EXIT_REJECTED = 3
EXIT_FAILED = 4


def apply_files(payload_path: str, base_path: str, out_path: str, *, payload_sha256: str | None, base_sha256: str | None) -> dict:
    with mapped_file(payload_path) as payload, mapped_file(base_path) as base:
        if payload_sha256 is not None and hashlib.sha256(payload).hexdigest() != payload_sha256:
            raise CorruptPatchError("payload file changed after it was verified")
        if base_sha256 is not None and hashlib.sha256(base).hexdigest() != base_sha256:
            raise WrongBaseError(f"base file {base_path} does not match the manifest's base hash")
        with open(out_path, "wb") as out:
            size, sha256 = apply_payload(payload, base, out)
            out.flush()
            os.fsync(out.fileno())
    return {"size": size, "sha256": sha256}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.delta.apply_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--payload", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--payload-sha256")
    parser.add_argument("--base-sha256")
    args = parser.parse_args(argv)
    try:
        result = apply_files(args.payload, args.base, args.out, payload_sha256=args.payload_sha256, base_sha256=args.base_sha256)
    except UpdateRejectedError as exc:
        print(json.dumps({"reason": exc.reason, "message": str(exc)}), flush=True)
        return EXIT_REJECTED
    except Exception as exc:  # noqa: BLE001 - the process boundary: report, never a trace
        print(json.dumps({"reason": "apply_failed", "message": f"{type(exc).__name__}: {exc}"}), flush=True)
        return EXIT_FAILED
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
