"""The optional `vllm` backend: a colocated vLLM engine for GPU users.

Not needed by the tests and not installed by default (`pip install vllm`). The engine is
started once from a copy of the model written to a temporary directory; before every use
its weights are synced from the live model (the student changes every step), through the
engine's `load_weights`, whose location inside vLLM moves between versions — the supported
path is the V0-style `llm_engine.model_executor.driver_worker.model_runner.model`.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from anydistill.errors import ConfigError
from anydistill.generation.base import Sampling, cut_at_eos


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            "source.generation.backend is vllm but the vllm package is not installed; "
            "`pip install vllm` (GPU) or set source.generation.backend=hf"
        ) from None
    return vllm


class VLLMBackend:
    """Samples with vLLM; `sync=True` copies the model's weights into the engine each call."""

    def __init__(
        self,
        model: torch.nn.Module,
        eos_id: int | None,
        sampling: Sampling,
        sync: bool,
        gpu_memory_utilization: float = 0.3,
    ) -> None:
        vllm = _import_vllm()
        from anydistill.models.heads import unwrap
        from anydistill.models.lora import merged_for_saving

        self.model = model
        self.eos_id = eos_id
        self.sampling = sampling
        self.sync = sync
        self._vllm = vllm
        self._dir = tempfile.TemporaryDirectory(prefix="anydistill-vllm-")
        merged_for_saving(unwrap(model)).save_pretrained(self._dir.name)
        self.llm = vllm.LLM(
            model=self._dir.name,
            skip_tokenizer_init=True,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=False,
        )

    def _push_weights(self) -> None:
        from anydistill.models.heads import unwrap
        from anydistill.models.lora import merged_for_saving

        try:
            target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise ConfigError(
                "source.generation.backend vllm: this vLLM version hides the model from "
                "weight sync; use a vLLM with the V0 engine or set backend=hf"
            ) from None
        state = merged_for_saving(unwrap(self.model)).state_dict()
        target.load_weights(state.items())

    def generate(self, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
        if self.sync:
            self._push_weights()
        s = self.sampling
        requests = [{"prompt_token_ids": p} for p in prompts]
        params = [
            self._vllm.SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=max_new_tokens,
                seed=(seed + i) % 2**63,
                stop_token_ids=[self.eos_id] if self.eos_id is not None else None,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [cut_at_eos(list(o.outputs[0].token_ids), self.eos_id) for o in outputs]
