"""Generated tokens per second on a GPU: our decode loops against HF's batched `generate` (and vLLM where installed),
beside the memory-bandwidth bound of each shape (issue 23).

Models are built with random weights from configs that ship with the package or the repository (SmolLM2-135M's
from the prepared model folder, Qwen2.5-Coder-7B's from axolotl_domino/model_configs): nothing is downloaded, and
random weights decode as fast as trained ones. Shapes: the sampler (a shared soft prefix of k = 256 vectors, then
128 new tokens per row, temperature 1) and the responder (chat prompts of mixed lengths, 30 to 300 tokens, left-
padded, then 128 new tokens, greedy), at batch 64 and 256. No row stops early: stop ids are empty for ours, and
`min_new_tokens` holds `generate` to the same 128.

Rows, each the best of `--repeats` timed runs after a warm-up (which compiles where a path compiles):
  ours-static   the static loop (static_decode.py): StaticCache, the step under torch.compile (CUDA graphs)
  ours-dynamic  the dynamic loop (hf.decode), what ran before issue 23
  hf-generate   model.generate, batched, its default (dynamic) cache
  hf-static     model.generate with cache_implementation="static" and its compiled forward (the strongest HF peer)
  vllm          vLLM from `prompt_embeds` / prompts (sampler and responder), where vLLM is installed

The bound of a shape: the bytes one decode step must read (every weight once, and each row's key/value cache at its
mean length over the 128 steps) over the device-to-device copy rate measured here. Each row prints ours / bound.
Last line: `gpu_decode_vs_bound: X` (ours-static, 7B, batch 64, sampler; or the largest model run).

    python bench/gpu_throughput.py                      # on a GPU node: both models, both batch sizes
    python bench/gpu_throughput.py --models smollm2 --batches 4 --new-tokens 8 --device cpu   # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from axolotl_domino.args import SynthesisConfig  # noqa: E402
from axolotl_domino.chat import ChatGenerator  # noqa: E402
from axolotl_domino.generate import PrefixSampler  # noqa: E402

CONFIGS = {
    "smollm2": REPO / "models" / "smollm2-135m-instruct" / "config.json",
    "qwen7b": REPO / "axolotl_domino" / "model_configs" / "Qwen--Qwen2.5-Coder-7B-Instruct.json",
}
TOKENIZER = REPO / "models" / "smollm2-135m-instruct"  # its ids (< 49152) fit every model's vocabulary here


class _Tokenizer:
    """What the loops read of a tokenizer when prompts are token ids already: the end and pad ids (never drawn:
    the stop ids are emptied below)."""

    eos_token_id = pad_token_id = 0
    chat_template = "ids"

    def decode(self, ids, skip_special_tokens=False):
        return ""


def build(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(str(CONFIGS[name]))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def copy_rate(device: torch.device) -> float:
    """Bytes a device-to-device copy moves per second (read + write), the best of 10 copies of 1 GiB."""
    x = torch.empty(2**28, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * x.numel() * 4 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bound(model, batch: int, context: float, rate: float) -> float:
    """Generated tokens/s at the bandwidth bound: `batch` tokens per step, each step reading every weight once and
    each row's cache at `context` positions."""
    text = model.config.get_text_config()
    kv_dim = (getattr(text, "num_key_value_heads", None) or text.num_attention_heads) * \
        (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    itemsize = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) * itemsize
    cache = batch * context * text.num_hidden_layers * 2 * kv_dim * itemsize
    return batch * rate / (weights + cache)


def timed(run, device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of `repeats` runs after one warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def sampler_runs(model, batch: int, k: int, new: int, device: torch.device) -> dict:
    torch.manual_seed(1)
    hidden = model.config.get_text_config().hidden_size
    domain = torch.randn(k, hidden, device=device) * 0.02
    runs = {}
    for loop in ("static", "dynamic"):
        settings = SynthesisConfig(temperature=1.0, max_new_tokens=new, batch_size=batch, decode=loop)
        sampler = PrefixSampler(model, _Tokenizer(), domain, settings, [])
        sampler.eos = set()  # every row decodes all `new` tokens
        runs[f"ours-{loop}"] = lambda sampler=sampler: sampler.sample(list(range(batch)))
    embeds = domain.to(next(model.parameters()).dtype)[None].expand(batch, -1, -1)
    mask = torch.ones(batch, k, dtype=torch.long, device=device)
    common = dict(inputs_embeds=embeds, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None)
    runs["hf-generate"] = lambda: model.generate(**common)
    runs["hf-static"] = lambda: model.generate(**common, cache_implementation="static")
    vllm = _vllm_sampler(model, domain, batch, new)
    if vllm is not None:
        runs["vllm"] = vllm
    return runs


def responder_runs(model, batch: int, new: int, device: torch.device) -> dict:
    torch.manual_seed(2)
    lengths = torch.randint(30, 301, (batch,)).tolist()
    prompts = [torch.randint(1, 49152, (n,)).tolist() for n in lengths]
    runs = {}
    for loop in ("static", "dynamic"):
        generator = ChatGenerator(model, _Tokenizer(), "bench", decode=loop)
        generator.stop = set()
        runs[f"ours-{loop}"] = lambda generator=generator: generator.generate_ids(prompts, new)
    width = max(lengths)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = (torch.arange(width, device=device)[None] >= torch.tensor([width - n for n in lengths], device=device)[:, None]).long()
    common = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                  pad_token_id=0, eos_token_id=None)
    runs["hf-generate"] = lambda: model.generate(**common)
    runs["hf-static"] = lambda: model.generate(**common, cache_implementation="static")
    return runs, sum(lengths) / batch


def _vllm_sampler(model, domain, batch: int, new: int):
    """vLLM from `prompt_embeds`, on a copy of the model saved to disk (vLLM loads its own), where it is installed."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return None
    import tempfile

    from axolotl_domino.generate_vllm import VllmSampler

    folder = tempfile.mkdtemp(prefix="bench-vllm-")
    model.save_pretrained(folder)
    settings = SynthesisConfig(backend="vllm", temperature=1.0, max_new_tokens=new, batch_size=batch,
                               gpu_memory_utilization=0.3)
    sampler = VllmSampler(folder, _Tokenizer(), domain.float().cpu(), settings)
    return lambda: sampler.sample(list(range(batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen7b"], choices=sorted(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--k", type=int, default=256, help="soft-prefix length of the sampler")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out, e.g. hf-static vllm")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rate = copy_rate(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; copy rate {rate / 1e12:.2f} TB/s; {args.new_tokens} new tokens a row")
    rows, headline = [], None
    for model_name in args.models:
        model = build(model_name, device, dtype)
        for batch in args.batches:
            shapes = {"sampler": (sampler_runs(model, batch, args.k, args.new_tokens, device), args.k)}
            runs, prompt = responder_runs(model, batch, args.new_tokens, device)
            shapes["responder"] = (runs, prompt)
            for shape, (runs, context) in shapes.items():
                limit = bound(model, batch, context + args.new_tokens / 2, rate)
                for impl, run in runs.items():
                    if impl in args.skip:
                        continue
                    try:
                        seconds = timed(run, device, args.repeats)
                    except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is a row saying why
                        print(f"  {model_name:8s} {shape:9s} batch {batch:4d} {impl:13s} failed: {type(exc).__name__}: {exc}")
                        continue
                    rate_tps = batch * args.new_tokens / seconds
                    row = {"model": model_name, "shape": shape, "batch": batch, "impl": impl, "tokens_per_s": round(rate_tps),
                           "bound_tokens_per_s": round(limit), "vs_bound": round(rate_tps / limit, 3)}
                    rows.append(row)
                    print(f"  {model_name:8s} {shape:9s} batch {batch:4d} {impl:13s} {rate_tps:10.0f} tokens/s   "
                          f"bound {limit:10.0f}   {rate_tps / limit:6.1%} of it", flush=True)
                    if impl == "ours-static" and shape == "sampler" and batch == min(args.batches, key=lambda b: abs(b - 64)):
                        headline = row["vs_bound"]
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for model_name in args.models:  # ours against HF's, per shape
        for shape in ("sampler", "responder"):
            for batch in args.batches:
                by = {r["impl"]: r["tokens_per_s"] for r in rows if (r["model"], r["shape"], r["batch"]) == (model_name, shape, batch)}
                if "ours-static" in by:
                    peers = ", ".join(f"{impl} {by['ours-static'] / v:.2f}x" for impl, v in by.items() if impl != "ours-static" and v)
                    print(f"ours-static against: {model_name} {shape} batch {batch}: {peers}")
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print(f"gpu_decode_vs_bound: {headline}")


if __name__ == "__main__":
    main()
