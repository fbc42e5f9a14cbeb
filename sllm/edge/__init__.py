"""The HTTP edge shared by the head, the worker and the backends: the OpenAI protocol's
models, errors and their responses, body and header limits, names, keys and guards,
the messages results travel in, and how every server is run and logs."""
