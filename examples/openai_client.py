"""Chat, streaming and embeddings against an sllm head with the OpenAI SDK.

sllm up                      # in another terminal: cluster + the "demo" model
python examples/openai_client.py [--base-url http://127.0.0.1:8343/v1] [--model demo]
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8343/v1")
    parser.add_argument("--model", default="demo")
    parser.add_argument(
        "--embedding-model",
        default=None,
        help="a deployed embedding model, e.g. all-minilm-l6-v2 (examples/minilm-embeddings.json)",
    )
    args = parser.parse_args()

    # This version of sllm checks no API key, but the SDK insists on one.
    with OpenAI(base_url=args.base_url, api_key="unused") as client:
        print("models:", [m.id for m in client.models.list().data])

        reply = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=32,
        )
        print("chat:", reply.choices[0].message.content)
        print("served by instance", reply.system_fingerprint, "| usage:", reply.usage)

        print("stream: ", end="", flush=True)
        stream = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": "Count to ten."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
            elif chunk.usage is not None:
                print(f"\n  ({chunk.usage.completion_tokens} tokens)")

        if args.embedding_model is None:
            print("embeddings: skipped (pass --embedding-model)")
            return
        vectors = client.embeddings.create(
            model=args.embedding_model, input=["a first text", "a second one"]
        )
        print("embeddings:", len(vectors.data), "vectors of", len(vectors.data[0].embedding))


if __name__ == "__main__":
    main()
