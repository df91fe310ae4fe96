"""vLLM backend of the generator (`domino.synthesis.backend: vllm`, extra `axolotl-domino[vllm]`).

vLLM removed prompt adapters; it serves soft prompts through `prompt_embeds` instead
(`LLM(enable_prompt_embeds=True)`, prompts `{"prompt_embeds": tensor[k, hidden]}`). Each sample is
its own request with its own seed from `sample_seed(seed, i)`, so samples do not depend on how
requests are batched, as in the Hugging Face backend (the two backends' samples differ: different
kernels and samplers). `VllmChat` answers chat turns on vLLM for the responder under the same backend.
Needs a GPU; untested on the CPU-only machines this project is built on (bench/gpu_smoke.sh runs both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import Sample
from axolotl_domino.hf import Conversation, Reply, sample_seed


class VllmSampler:
    def __init__(self, model_name: str, tokenizer, domain: Tensor, settings: SynthesisConfig):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "domino.synthesis.backend: vllm needs vLLM: `pip install axolotl-domino[vllm]` (GPU only)."
            ) from exc
        self.settings, self.domain = settings, domain.detach().cpu()
        self.eos = {tokenizer.eos_token_id}
        self.llm = LLM(
            model=model_name,
            enable_prompt_embeds=True,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
        )
        # D in the engine's dtype (bf16 for most checkpoints): every request carries its own copy of D to the
        # engine process (vLLM's prompt_embeds API has no shared prefix), so float32 would double that traffic.
        engine_dtype = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "dtype", None)
        if isinstance(engine_dtype, torch.dtype):
            self.domain = self.domain.to(engine_dtype)

    def close(self) -> None:
        """Shut the engine down and return its GPU memory, so the HF responder can load after it."""
        import gc

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def sample_many(self, indices: list[int], progress: tqdm | None = None) -> Iterator[Sample]:
        from vllm import SamplingParams

        s = self.settings
        params = [
            SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k else -1,
                repetition_penalty=s.repetition_penalty,
                max_tokens=s.max_new_tokens,
                stop=s.stop or None,
                seed=sample_seed(s.seed, i),
            )
            for i in indices
        ]
        started = time.perf_counter()
        outputs = self.llm.generate([{"prompt_embeds": self.domain}] * len(indices), params, use_tqdm=False)
        tokens = 0
        for index, output in zip(indices, outputs):
            completion = output.outputs[0]
            ids = [t for t in completion.token_ids if t not in self.eos]
            tokens += len(completion.token_ids)
            yield Sample(index=index, token_ids=ids, finished=completion.finish_reason == "stop")
        if progress is not None:
            progress.update(len(indices))
            progress.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - started):.1f}")


class VllmChat:
    """Chat replies from a vLLM engine (`LLM.chat`, the model's own chat template): `hf.ChatGenerator`'s contract.

    Conversation i gets seed `seed + i`, as over an endpoint. `close()` frees the GPU for whatever loads next.
    """

    def __init__(self, model_name: str, settings: SynthesisConfig, trust_remote_code: bool = False):
        from vllm import LLM

        self.llm = LLM(
            model=model_name,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            trust_remote_code=trust_remote_code,
        )

    def __call__(self, conversations: list[Conversation], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0) -> list[Reply]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + i)
                  for i in range(len(conversations))]
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        return [Reply(out.outputs[0].text.strip(), out.outputs[0].finish_reason == "stop") for out in outputs]

    close = VllmSampler.close
