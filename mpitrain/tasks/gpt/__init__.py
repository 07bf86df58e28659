"""The GPT task: a decoder-only causal language model trained from scratch."""
