import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from simproc import controller, engine, p2p_config  # noqa: E402

LOCAL_CFG = {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5,
             "nixl_role": "sender"}  # nixl_role: an old key, to check LMCache's warning


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="module")
def solo(tmp_mod):
    """One engine with LMCache on its local CPU tier, dev endpoints, request-id headers."""
    p = engine(tmp_mod, "solo", config=LOCAL_CFG, env_extra={"VLLM_SERVER_DEV_MODE": "1"},
               args=["--enable-request-id-headers", "--enable-prompt-tokens-details",
                     "--served-model-name", "llama", "meta-llama/Meta-Llama-3.1-8B-Instruct"])
    yield p
    p.stop()


@pytest.fixture(scope="module")
def cluster(tmp_mod):
    """Controller + engines A and B (PYTHONHASHSEED=123) + C (PYTHONHASHSEED=456), P2P on."""
    ctl, pull, reply = controller(tmp_mod)
    procs = {"ctl": ctl}
    try:
        for name, seed in (("a", "123"), ("b", "123"), ("c", "456")):
            procs[name] = engine(tmp_mod, f"eng_{name}", seed=seed, wait=False,
                                 config=p2p_config(f"lmcache_instance_{name}", pull, reply))
        for name in "abc":
            procs[name].wait_healthy()
        yield procs
    finally:
        for p in procs.values():
            p.stop()
