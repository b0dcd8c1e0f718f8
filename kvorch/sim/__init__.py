"""Simulated vLLM + LMCache engine and LMCache controller.

``python -m kvorch.sim.engine`` takes the same arguments as
``python -m vllm.entrypoints.openai.api_server`` (plus ``--sim-*`` latency flags) and reads
``LMCACHE_CONFIG_FILE`` / ``LMCACHE_*`` like LMCache 0.5.6; ``python -m kvorch.sim.controller``
takes ``lmcache_controller``'s flags. Both answer in milliseconds, bind only where told, and stop
cleanly on SIGTERM. See engine.py, controller.py and lmcache_sim.py for the protocols.
"""
