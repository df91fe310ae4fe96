"""GPU smoke suite: the GPU, DeepSpeed, vLLM and torchrun paths, each run for real once, PASS/FAIL with timings.

Run on a machine with one or more NVIDIA GPUs, from a fresh clone: `bash bench/gpu_smoke.sh` installs the
extras and runs this file (or, in a ready venv: `python bench/gpu_smoke.py`). Every check is a real
`axolotl` command or a short script on the embedded SmolLM2 with small step counts, in its own folder
under outputs/gpu_smoke/; the table goes to stdout and outputs/gpu_smoke/results.md, each check's output
to outputs/gpu_smoke/<check>.log. A check whose requirement is missing (flash-attn not installed, one
GPU for torchrun) is SKIP with the reason. Exit status 1 if any check failed.

What each check asserts is in its `expect` (a file that must exist, or text the output must contain).

`--random-weights` runs the whole suite on a node that has no model weights and no network (the offline GPU node
of ../shared/offline-gpu/README.md): the prepared model folder needs only its config and tokenizer files, into
which random weights are written; a tiny random sentence-transformers embedder stands in for MiniLM; and every
check keeps unfinished samples and answers (random weights rarely reach EOS). It checks code paths, speed and
memory, not quality. Each check is sized to end within minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "gpu_smoke"
MODEL = REPO / "models" / "smollm2-135m-instruct"


@dataclass
class Result:
    name: str
    status: str
    seconds: float
    detail: str


RANDOM = False  # --random-weights: set in main()


def random_fixtures() -> Path:
    """Random weights into MODEL (its config and tokenizer stay), and a tiny random sentence-transformers embedder;
    returns the embedder's folder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoConfig, BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODEL), dtype=torch.float32)
    model.save_pretrained(MODEL)
    (MODEL / "domino_prepared.json").write_text('{"random_weights": true}\n')
    bert = OUT / "embedder" / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt"), do_lower_case=False).save_pretrained(bert)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=512)).save_pretrained(bert)
    embedder = OUT / "embedder" / "st"
    SentenceTransformer(modules=[models.Transformer(str(bert), max_seq_length=256), models.Pooling(64, "mean")]).save(str(embedder))
    return embedder


EMBEDDER: Path | None = None


def _yaml(name: str, **top) -> Path:
    """The quickstart, scaled down (8 references, 8 samples, a few steps), in its own folder; `top` overrides."""
    config = yaml.safe_load((REPO / "example_yamls" / "quickstart.yaml").read_text())
    folder = OUT / name
    domino = config["domino"]
    domino["output_dir"] = str(folder / "domino")
    domino["references"]["path"] = str(REPO / "data" / "mbpp" / "references_train100.jsonl")
    domino["induction"].update(num_domain_tokens=8, num_sample_tokens=8, max_steps=6, eval_steps=3, eval_samples=4)
    domino["synthesis"].update(num_samples=8, max_new_tokens=48, keep_unfinished=True)
    domino["responses"].update(max_new_tokens=128, keep_unfinished=True)
    domino["filters"] = {"dedup": {"enabled": True}}
    config.update(base_model=str(MODEL), output_dir=str(folder / "sft"), dataset_prepared_path=str(folder / "prepared"),
                  max_steps=4, bf16=True)
    for key, value in top.items():
        if key == "domino":
            for block, settings in value.items():
                domino[block] = {**domino.get(block, {}), **settings} if isinstance(settings, dict) else settings
        else:
            config[key] = value
    if RANDOM:  # random weights rarely end a sample or an answer; the stand-in embedder scores
        domino["synthesis"]["keep_unfinished"] = domino["responses"]["keep_unfinished"] = True
        domino["score"] = {**domino.get("score", {}), "embedding_model": str(EMBEDDER)}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _zero3_offload() -> Path:
    """The shipped ZeRO-3 config with the (frozen) parameters offloaded to CPU memory; D and S's optimizer stays on
    the GPU, so the Trainer's own AdamW serves (an offloaded optimizer needs DeepSpeed's compiled CPU Adam)."""
    config = json.loads((REPO / "axolotl_domino" / "deepspeed_configs" / "zero3.json").read_text())
    config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    path = OUT / "zero3_offload.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _run(name: str, command: list[str], expect: Path | str, timeout: int, fail_ok: bool = False) -> Result:
    """Run `command`; PASS when it exits 0 (nonzero with `fail_ok`) and `expect` exists / is in its output."""
    log = OUT / f"{name}.log"
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {timeout} s", None
    seconds = time.monotonic() - start
    log.write_text(output if isinstance(output, str) else output.decode(errors="replace"))
    exited = code is not None and ((code != 0) if fail_ok else (code == 0))
    found = expect.exists() if isinstance(expect, Path) else expect in output
    detail = "" if exited and found else f"exit {code}; expected {expect}; see {log.relative_to(REPO)}"
    return Result(name, "PASS" if exited and found else "FAIL", seconds, detail)


def _script(name: str, code: str, expect: str, timeout: int) -> Result:
    return _run(name, [sys.executable, "-c", code], expect, timeout)


SAMPLER_EXACT = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.induce import embedding_scale
model = AutoModelForCausalLM.from_pretrained("{model}", dtype=torch.float32).cuda().eval()
tok = AutoTokenizer.from_pretrained("{model}")
torch.manual_seed(0)
domain = (torch.randn(16, model.config.hidden_size) * embedding_scale(model)).cuda()
settings = SynthesisConfig(temperature=0.0, max_new_tokens=32, batch_size=8)
ours = PrefixSampler(model, tok, domain, settings, []).sample(list(range(8)))
with torch.no_grad():
    ref = model.generate(inputs_embeds=domain[None], attention_mask=torch.ones(1, 16, dtype=torch.long, device="cuda"),
                         do_sample=False, max_new_tokens=32, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
ref = [t for t in ref[0].tolist() if t != tok.pad_token_id]
ref = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
same = all(s.token_ids == ref for s in ours)
print("greedy samples equal generate:", same, ours[0].token_ids[:8], ref[:8])
assert same
print("SAMPLER_EXACT_OK")
"""

STATIC_EXACT = """
import torch
from transformers import AutoModelForCausalLM
from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.induce import embedding_scale
class Tok:
    eos_token_id = 2
    def decode(self, ids, skip_special_tokens=False):
        return ""
model = AutoModelForCausalLM.from_pretrained("{model}", dtype=torch.float32).cuda().eval()
torch.manual_seed(0)
domain = (torch.randn(16, model.config.hidden_size) * embedding_scale(model)).cuda()
for temperature in (0.0, 1.0):
    out = {{}}
    for loop in ("dynamic", "static"):
        settings = SynthesisConfig(temperature=temperature, max_new_tokens=48, batch_size=8, decode=loop)
        sampler = PrefixSampler(model, Tok(), domain, settings, [])
        out[loop] = [s.token_ids for s in sampler.sample_many(list(range(20)))]
    same = sum(a == b for a, b in zip(out["dynamic"], out["static"]))
    print(f"temperature {{temperature}}: {{same}} of 20 samples equal on both loops (float32, CUDA graphs)")
    assert same >= (20 if temperature == 0 else 18)  # sampled: a draw on a CDF boundary may round otherwise
print("STATIC_EXACT_OK")
"""

THROUGHPUT = """
import time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.generate_vllm import VllmSampler
from axolotl_domino.induce import embedding_scale
tok = AutoTokenizer.from_pretrained("{model}")
n, new = 256, 128
settings = SynthesisConfig(backend="vllm", temperature=1.0, max_new_tokens=new, batch_size=64, gpu_memory_utilization=0.4)
model = AutoModelForCausalLM.from_pretrained("{model}", dtype=torch.bfloat16).cuda().eval()
torch.manual_seed(0)
domain = (torch.randn(64, model.config.hidden_size) * embedding_scale(model)).float()
for name, make in (("ours (HF, bf16)", lambda: PrefixSampler(model, tok, domain.cuda().bfloat16(), settings, [])),
                   ("vLLM", lambda: VllmSampler("{model}", tok, domain, settings))):
    sampler = make()
    start = time.perf_counter()
    samples = list(sampler.sample_many(list(range(n))))
    seconds = time.perf_counter() - start
    tokens = sum(len(s.token_ids) + s.finished for s in samples)
    print(f"{{name}}: {{n}} samples, {{tokens / seconds:.0f}} generated tokens/s")
    if hasattr(sampler, "close"):
        sampler.close()
print("THROUGHPUT_OK")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these checks")
    parser.add_argument("--timeout", type=int, default=480, help="seconds per check (8 minutes: each should end well inside)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights into the prepared model's config and tokenizer, a tiny embedder (no GGUF)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this suite needs a GPU (the CPU paths run in `make test`)")
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    global RANDOM, EMBEDDER
    if args.random_weights:
        RANDOM, EMBEDDER = True, random_fixtures()
    gpus, t = torch.cuda.device_count(), args.timeout
    try:
        import flash_attn  # noqa: F401

        has_flash = True
    except ImportError:
        has_flash = False
    axolotl = [str(Path(sys.executable).parent / "axolotl")]
    base = OUT / "induce-bf16-sdpa" / "domino" / "induction" / "adapter"

    def induce(name: str, **top):
        config = _yaml(name, **top)
        return _run(name, axolotl + ["domino", "induce", str(config)], OUT / name / "domino" / "induction" / "adapter"
                    / "adapter_model.safetensors", t)

    def train(name: str, expect_file: str = "adapter_model.safetensors", extra: list[str] = (), **top):
        config = _yaml(name, **top)
        return _run(name, axolotl + ["train", str(config), *extra], OUT / name / "sft" / expect_file, t)

    checks = {
        "prepare-model": "random weights: no GGUF to convert" if RANDOM else lambda: _run(
            "prepare-model", axolotl + ["domino", "prepare-model", "smollm2-135m-instruct", "--output", str(MODEL)],
            MODEL / "config.json", t),
        "induce-bf16-sdpa": lambda: induce("induce-bf16-sdpa", flash_attention=False),
        "induce-bf16-flash-attn": (lambda: induce("induce-bf16-flash-attn", flash_attention=True)) if has_flash
        else "flash-attn is not installed (pip install axolotl-domino[flash-attn] builds it from source)",
        "induce-zero2": lambda: induce("induce-zero2", domino={"induction": {"axolotl": {"deepspeed": "zero2"}}}),
        # ZeRO-3 induction (issue 25) on one GPU still partitions and gathers (a world of one); the diagnostics are
        # skipped; with the parameters offloaded to the CPU as well.
        "induce-zero3": lambda: induce("induce-zero3", domino={"induction": {"axolotl": {"deepspeed": "zero3"}}}),
        "induce-zero3-offload": lambda: induce("induce-zero3-offload", domino={
            "induction": {"axolotl": {"deepspeed": str(_zero3_offload())}}}),
        "sft-zero2": lambda: train("sft-zero2", deepspeed="zero2", domino={"synthesis": {"adapter": str(base)}}),
        "sft-zero3": lambda: train("sft-zero3", deepspeed="zero3", domino={"synthesis": {"adapter": str(base)}}),
        "vllm-synthesis-responder": lambda: train(
            "vllm-synthesis-responder",
            domino={"synthesis": {"adapter": str(base), "backend": "vllm", "gpu_memory_utilization": 0.4}}),
        "sampler-exact-gpu": lambda: _script("sampler-exact-gpu", SAMPLER_EXACT.format(model=MODEL), "SAMPLER_EXACT_OK", t),
        "static-decode-exact-gpu": lambda: _script("static-decode-exact-gpu", STATIC_EXACT.format(model=MODEL),
                                                   "STATIC_EXACT_OK", t),
        "gpu-throughput": lambda: _run("gpu-throughput", [sys.executable, str(REPO / "bench" / "gpu_throughput.py"),
                                                          "--models", "smollm2", "--batches", "64", "--json",
                                                          str(OUT / "gpu-throughput.jsonl")], "gpu_decode_vs_bound:", t),
        "vllm-vs-ours-throughput": lambda: _script("vllm-vs-ours-throughput", THROUGHPUT.format(model=MODEL), "THROUGHPUT_OK", t),
        "quickstart": lambda: train("quickstart", bf16="auto", max_steps=None, domino={
            "induction": {"num_domain_tokens": 16, "num_sample_tokens": 16, "max_steps": None, "eval_steps": 50,
                          "eval_samples": 32},
            "synthesis": {"num_samples": 64, "max_new_tokens": 80, "keep_unfinished": False},
            "responses": {"max_new_tokens": 192, "keep_unfinished": False}}),
        "torchrun-2-ranks": (lambda: train("torchrun-2-ranks", extra=["--launcher", "torchrun", "--", "--nproc_per_node", "2"]))
        if gpus >= 2 else f"{gpus} GPU: torchrun needs 2 or more",
    }
    results = []
    for name, check in checks.items():
        if args.only and name not in args.only:
            continue
        result = Result(name, "SKIP", 0.0, check) if isinstance(check, str) else check()
        results.append(result)
        print(f"{result.status:4s}  {result.seconds:7.1f} s  {name}  {result.detail}", flush=True)
    header = (f"GPU smoke suite, {time.strftime('%Y-%m-%d %H:%M')}: {gpus} x {torch.cuda.get_device_name(0)}, "
              f"torch {torch.__version__}\n\n| check | result | seconds | detail |\n| --- | --- | --- | --- |\n")
    table = "".join(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.detail} |\n" for r in results)
    (OUT / "results.md").write_text(header + table)
    print(f"\n{header}{table}")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
