"""Fixtures of the `bora` package's tests: the repository's model fixtures, one engine per
model for the session (loading is the slow part), and `bora serve` for comparisons.

BORA_BIN names the `bora` binary for the server comparison (default: target/release/bora).
"""

import pytest

import bora
from reference import ROOT, TINY
from serving import serve

GGUF = ROOT / "models" / "fixtures" / "gguf" / "tiny-Q4_K_M.gguf"


@pytest.fixture(scope="session")
def tiny():
    return bora.Engine(str(TINY), kv_cache_mib=64)


@pytest.fixture(scope="session")
def demo():
    # Batch-invariant numerics: a seeded request gives the same answer alone and batched.
    return bora.Engine("bora-demo", kv_cache_mib=64, deterministic=True)


@pytest.fixture(scope="session")
def demo_v3():
    return bora.Engine("bora-demo-v3", kv_cache_mib=64)


@pytest.fixture(scope="session")
def server():
    """`bora serve` on the tiny fixture, on a free loopback port."""
    with serve("--model", str(TINY), "--kv-cache-mib", "64") as url:
        yield url
