"""An embedding model (a transformers encoder) exported to ONNX for the onnx backend:
``python -m sllm.store.onnx_encoder SOURCE OUTPUT``, run by ``onnx_store.convert`` in a
child process (it imports torch and transformers; the serving process never does).

torch's exporter (``torch.onnx.export(..., dynamo=True)``, which needs onnxscript)
writes ``model.onnx``, inputs ``input_ids`` and ``attention_mask`` of any batch and
length, output the last hidden state: the legacy TorchScript exporter froze
transformers' mask arithmetic to the example's length and gave other lengths wrong
vectors. Beside it: ``tokenizer.json`` and ``sllm_encoder.json``, the pooling,
normalization and context the transformers backend would use for the same model
(``hf_embedding.sentence_transformers_pooling``), so both give the same vectors.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

# What the serving side reads beside the model.
ENCODER_FILE = "sllm_encoder.json"


def export(source: Path, output: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from sllm.backends.hf_embedding import sentence_transformers_pooling

    model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not (source / "tokenizer.json").is_file():
        raise SystemExit(f"{source} has no tokenizer.json (a fast tokenizer), which serving reads")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state  # type: ignore[no-any-return]

    example = tokenizer(
        ["an example", "a longer example sentence"], padding=True, return_tensors="pt"
    )
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    output.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        LastHiddenState(),
        (example["input_ids"], example["attention_mask"]),
        str(output / "model.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
        dynamo=True,
        external_data=True,  # the weights in model.onnx.data: the chunk the memory tier locks
    )
    shutil.copyfile(source / "tokenizer.json", output / "tokenizer.json")
    pooling, normalize = sentence_transformers_pooling(source)
    # As the transformers backend bounds it: tokenizers without a limit report a huge
    # model_max_length, the positions bound it.
    positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    context = min(int(getattr(tokenizer, "model_max_length", 512) or 512), positions)
    described = {
        "pooling": pooling,
        "normalize": normalize,
        "context_length": context,
        "pad_token_id": int(tokenizer.pad_token_id or 0),
    }
    (output / ENCODER_FILE).write_text(json.dumps(described, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    export(args.source, args.output)


if __name__ == "__main__":
    main()
