"""sllm's checkpoint format: models stored once in a layout made for fast loading
(``format``), written atomically and checked (``ingest``, ``integrity``), loaded by
parallel sequential reads straight into the model's tensors (``loader``), and kept
under the worker's storage path (``catalog``)."""
