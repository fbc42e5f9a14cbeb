"""sllm: a serverless LLM serving cluster."""

__version__ = "0.1.0"
