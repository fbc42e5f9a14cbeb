"""Backends: each is a local OpenAI-compatible server the worker launches per instance."""
