"""The OpenAI API's model list: what is deployed, as vLLM's server describes a model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from sllm.edge.errors import ModelNotFound
from sllm.edge.protocol import ModelCard, ModelList, adapter_model_name
from sllm.kv.store import Store

router = APIRouter()


def _store(request: Request) -> Store:
    store: Store = request.app.state.gateway.store
    return store


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=await _model_cards(_store(request)))


@router.get("/v1/models/{model_id:path}", responses={404: {"description": "No such model."}})
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    for card in await _model_cards(_store(request)):
        if card.id == model_id:
            return card
    raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")


async def _model_cards(store: Store) -> list[ModelCard]:
    """The active models and their adapters, each with its context as an instance of it
    last reported it (vLLM's ``max_model_len``)."""
    registry = store.registry
    contexts: dict[str, int] = {}
    for worker in await registry.list_workers():
        for inst in worker.instances:
            if isinstance(inst.get("context_length"), int):
                contexts[str(inst.get("model"))] = inst["context_length"]
    cards = []
    for m in await registry.list_models():
        if m.state != "active":
            continue
        base = ModelCard(
            id=m.name,
            created=int(m.created),
            root=(m.config.get("backend_config") or {}).get("pretrained_model_name_or_path"),
            max_model_len=contexts.get(m.name),
        )
        cards.append(base)
        cards.extend(
            base.model_copy(update={"id": adapter_model_name(m.name, a), "parent": m.name})
            for a in sorted(m.config.get("lora_adapters") or {})
        )
    return cards
