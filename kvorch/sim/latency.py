"""The latency model of the simulated engine (all parameters in ms or MB/s).

* prefill: ``prefill_ms_per_token`` per token the engine computes (not cached anywhere);
* load: ``load_ms_per_token`` per token loaded from LMCache's CPU tier,
  ``disk_load_ms_per_token`` from its disk tier;
* P2P: the modeled KV size (tokens x model bytes/token) over ``transfer_mbps`` (MB/s), plus load;
* CacheBlend: loaded segment tokens also pay ``recompute_ratio * prefill`` each;
* decode: ``ms_per_output_token`` per generated token after the first;
* under load: times are multiplied by ``1 + (load_factor - 1) * (running - 1) / (max_num_seqs - 1)``
  (llm-d's "time-factor-under-load"); requests beyond ``--max-num-seqs`` wait in a FIFO queue.

Defaults give a cold 1,500-token prefill of ~150 ms against ~15 ms to load it: cached prefill
is clearly faster, at millisecond scale.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LatencyModel:
    prefill_ms_per_token: float = 0.1
    load_ms_per_token: float = 0.01
    disk_load_ms_per_token: float = 0.03
    store_ms_per_token: float = 0.002
    transfer_mbps: float = 10000.0
    ms_per_output_token: float = 2.0
    startup_s: float = 0.0
    load_factor: float = 1.0

    def prefill_s(self, tokens: int) -> float:
        return tokens * self.prefill_ms_per_token / 1000.0

    def load_s(self, tokens: int) -> float:
        return tokens * self.load_ms_per_token / 1000.0

    def disk_load_s(self, tokens: int) -> float:
        return tokens * self.disk_load_ms_per_token / 1000.0

    def store_s(self, tokens: int) -> float:
        return tokens * self.store_ms_per_token / 1000.0

    def transfer_s(self, nbytes: int) -> float:
        if self.transfer_mbps <= 0:
            return 0.0
        return nbytes / (self.transfer_mbps * 1e6)

    def decode_s(self) -> float:
        return self.ms_per_output_token / 1000.0

    def factor(self, running: int, max_num_seqs: int) -> float:
        if self.load_factor <= 1.0 or max_num_seqs <= 1:
            return 1.0
        frac = max(0, running - 1) / (max_num_seqs - 1)
        return 1.0 + (self.load_factor - 1.0) * min(1.0, frac)
