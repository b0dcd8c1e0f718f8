"""Other deployment targets for the same cluster (kvorch.export.helm: vLLM production-stack)."""
