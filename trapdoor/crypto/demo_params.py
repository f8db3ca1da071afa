"""Demo-only BCP parameters shipped in the repository.

Safe-prime generation takes tens of seconds at 2048 bits and minutes at 3072, so the
benchmarks, the demo and the end-to-end tests load parameters generated once and stored
here. Their factors are public (they are in this file's data folder): they protect
nothing. A deployment runs ``trapdoor kgc init``, which always generates fresh ones,
and the KGC refuses these unless it is started with an explicit demo flag.
"""

from __future__ import annotations

import json
import secrets
import sys
from importlib import resources
from pathlib import Path

from trapdoor.crypto.bcp import MasterKey, generate_params
from trapdoor.crypto.wire import from_obj, to_obj

DEMO_BITS = (1024, 2048, 3072)
DEMO_LABEL = "DEMO ONLY: these factors are public; never use these parameters to protect data"


def demo_params_path(bits: int) -> Path:
    return Path(str(resources.files("trapdoor.crypto") / "data" / f"demo-params-{bits}.json"))


def load_demo_master_key(bits: int = 2048) -> MasterKey:
    """The shipped demo parameters with their (public) master key."""
    if bits not in DEMO_BITS:
        raise ValueError(f"demo parameters exist for {DEMO_BITS} bits, not {bits}")
    obj = json.loads(demo_params_path(bits).read_text())
    if obj.get("label") != DEMO_LABEL:
        raise ValueError("demo parameter file is not labelled demo-only")
    key = from_obj({k: v for k, v in obj.items() if k != "label"})
    if not isinstance(key, MasterKey):
        raise ValueError("demo parameter file does not hold a master key")
    return key


def write_demo_params(bits: int) -> Path:
    """Generate and store demo parameters (maintainers only; slow for 2048+ bits)."""
    _, master = generate_params(bits, secrets.SystemRandom())
    path = demo_params_path(bits)
    path.write_text(json.dumps({**to_obj(master), "label": DEMO_LABEL}, indent=1) + "\n")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(write_demo_params(int(arg)))
