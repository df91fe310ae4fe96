"""`axolotl train` with `adapter: domino_prompt` on SmolLM2 and MBPP problem statements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_from_disk
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.hf import pad_right
from axolotl_domino.loss import domino_loss
from axolotl_domino.references import read_references, reference_token_ids
from _axolotl import REPO, run_axolotl, tensorboard_scalars, write_yaml


@pytest.fixture(scope="module")
def induced(smollm2, tmp_path_factory):
    """One short induction (8 MBPP statements, k = l = 8, 8 epochs) shared by the tests below.

    No `seed:`: the plugin takes domino.induction.seed (0), so the run is the same on every run of the
    test. lr 0.01 learns steadily: with domino.induction.seed 0-4 the epoch-mean L1 fell by 0.93-1.65,
    L2 by 0.78-2.51 and the whole-set contrastive accuracy ended at 0.375-1.0 (lr 0.05 diverged on seed 1).
    """
    tmp_path = tmp_path_factory.mktemp("induction")
    references = tmp_path / "refs.jsonl"
    lines = (REPO / "data" / "mbpp" / "references_train100.jsonl").read_text().splitlines()
    references.write_text("\n".join(lines[:8]) + "\n")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(lines[8:16]) + "\n")
    out = tmp_path / "out"
    config = {
        "base_model": str(smollm2),
        "plugins": ["axolotl_domino.DominoPlugin"],
        "adapter": "domino_prompt",
        "domino": {
            "references": {"path": str(references)},
            "output_dir": str(tmp_path / "domino"),
            "induction": {"num_domain_tokens": 8, "num_sample_tokens": 8, "eval_steps": 8, "eval_samples": 8},
            "synthesis": {"max_new_tokens": 32},  # the diagnostics' probe samples with these settings
            "score": {"heldout_path": str(heldout)},
            "cpu_bf16": False,  # float32: the checks below recompute the loss exactly
        },
        "sequence_len": 128,
        "micro_batch_size": 4,
        "num_epochs": 8,
        "learning_rate": 0.01,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch",
        "logging_steps": 2,
        "save_strategy": "no",
        "use_tensorboard": True,
        "output_dir": str(out),
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }
    proc = run_axolotl("train", str(write_yaml(tmp_path / "induce.yaml", config)))
    return out, references, proc.stdout + proc.stderr


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_bf16_keeps_the_induced_domains_loss_and_greedy_samples(smollm2, induced):
    """What a CPU's bf16 units (domino.cpu_bf16) may change: rounding, not what D* means.

    Tolerance: L1 of the induced D*, S within 3% of float32 (bf16 weights and activations: 1.5% measured on this
    D*, 0.07% on the quickstart's; training moves L1 by about 1 here), and L2 within 3% of L1: L2 is a difference of
    log-likelihoods as large as L1 and can end near 0, where a share of itself is no tolerance (on a CPU with AMX,
    2026-12-04: L2 -0.199 / -0.184, 0.7% of L1, 7% of L2); greedy text from D* and greedy
    answers to 4 references identical for their first 8 tokens (bf16 keeps 8 significant bits, so a
    near-tie between two tokens can flip later on; the answers then stay plausible, not identical).
    """
    from axolotl_domino.args import SynthesisConfig
    from axolotl_domino.generate import PrefixSampler
    from axolotl_domino.chat import ChatGenerator
    from axolotl_domino.hf import load_model

    out, references, _ = induced
    refs = read_references(references)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    domain = load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"]
    sample = load_file(str(out / "sample_tokens.safetensors"))["weight"]
    ids, mask = pad_right([reference_token_ids(t, tokenizer, "text", "user", 127)[0] for t in refs.texts],
                          tokenizer.pad_token_id)
    greedy = SynthesisConfig(num_samples=1, batch_size=1, max_new_tokens=32, temperature=0)
    chats = [[{"role": "user", "content": text}] for text in refs.texts[:4]]
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):  # loaded as the plugin loads them: bf16 with eager attention
        _, model = load_model(str(smollm2), torch.device("cpu"), cpu_bf16=dtype == torch.bfloat16)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = domino_loss(model, domain, sample, ids, mask)
        text = PrefixSampler(model, tokenizer, domain, greedy, []).sample([0])[0].token_ids
        answers = [tokenizer(r.text)["input_ids"] for r in ChatGenerator(model, tokenizer, "x")(chats, 32)]
        runs[dtype] = (loss, text, answers)
    (full, text32, answers32), (half, text16, answers16) = runs[torch.float32], runs[torch.bfloat16]
    measured = f"L1 {full.l1.item():.4f} / {half.l1.item():.4f}, L2 {full.l2.item():.4f} / {half.l2.item():.4f}"
    assert half.l1.item() == pytest.approx(full.l1.item(), rel=0.03), measured
    assert abs(half.l2.item() - full.l2.item()) <= 0.03 * abs(full.l1.item()), measured
    assert _common_prefix(text32, text16) >= 8, (tokenizer.decode(text32), tokenizer.decode(text16))
    assert all(_common_prefix(a, b) >= 8 for a, b in zip(answers32, answers16)), (answers32, answers16)


def test_induction_learns_and_round_trips_through_peft(smollm2, induced):
    out, references, log = induced
    assert "domino: seed: 0 (domino.induction.seed)" in log

    # Both terms fall. Each logged value is one epoch (2 steps of 4 of the 8 references).
    l1 = tensorboard_scalars(out, "train/domino/l1")
    l2 = tensorboard_scalars(out, "train/domino/l2")
    assert len(l1) == len(l2) == len(tensorboard_scalars(out, "train/domino/contrastive_accuracy")) == 8
    assert l1[-1] < l1[0] - 0.5, l1
    assert l2[-1] < l2[0] - 0.5, l2
    with pytest.raises(KeyError):  # Axolotl's exp(loss) "ppl" is not a perplexity of L1 + lambda * L2
        tensorboard_scalars(out, "train/ppl")

    # Outputs: S and the metadata beside a standard PEFT prompt-tuning adapter.
    refs = read_references(references)
    metadata = json.loads((out / "domino_induction.json").read_text())
    assert metadata["references_sha256"] == refs.sha256 and metadata["num_references"] == 8
    assert metadata["induction"]["num_domain_tokens"] == 8
    assert load_file(str(out / "sample_tokens.safetensors"))["weight"].shape == (8, 8, 576)

    # The saved S, in reference order, tells each reference from the 7 others at least twice as often as
    # chance (1/8): S_i is trained on reference i.
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    rows = [reference_token_ids(text, tokenizer, "text", "user", 127)[0] for text in refs.texts]
    ids, mask = pad_right(rows, tokenizer.pad_token_id)
    saved = load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"]
    with torch.no_grad():
        whole_set = domino_loss(base, saved, load_file(str(out / "sample_tokens.safetensors"))["weight"], ids, mask)
    assert whole_set.accuracy >= 2 / 8, whole_set

    # The diagnostics ran at steps 8 and 16 (the last), through the trainer's logging and into the report;
    # the last eval measured exactly the saved D and S: its retrieval and reference NLL are the whole-set loss's.
    report = json.loads((out / "induction_report.json").read_text())
    assert [e["step"] for e in report["history"]] == [8, 16] and report["kept_step"] == 16
    last = report["history"][-1]["metrics"]
    assert last["retrieval_references"] == 8 and last["retrieval_top1_chance"] == 1 / 8
    assert last["retrieval_top1"] == pytest.approx(whole_set.accuracy.item())
    assert last["reference_nll"] == pytest.approx(whole_set.l1.item(), abs=1e-4)
    assert last["heldout_nll"] > 0 and 0 <= last["near_copy_share"] <= 1 and 0 <= last["finished_share"] <= 1
    for name in ("near_copy_share", "retrieval_top1", "heldout_nll", "finished_share", "seconds"):
        assert len(tensorboard_scalars(out, f"train/domino/eval/{name}")) == 2, name
    assert (out / "induction_report.png").read_bytes()[:4] == b"\x89PNG"
    assert "induction eval at step 16 took" in log
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")  # ours, written again after Axolotl's generic card
    assert card.data.library_name == "peft" and "domino" in card.data.tags and "# DOMINO domain tokens D*" in card.text

    # D* round-trips through PEFT: plain prompt tuning over the loaded adapter gives exactly L1.
    model = PeftModel.from_pretrained(base, str(out)).eval()
    domain = model.get_prompt(batch_size=1)[0]
    torch.testing.assert_close(domain, saved)
    ids, _ = reference_token_ids(refs.texts[0], tokenizer, "text", "user", 1024)
    x = torch.tensor([ids])
    with torch.no_grad():
        peft_nll = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        ours = domino_loss(base, domain, None, x, torch.ones_like(x)).l1
    torch.testing.assert_close(peft_nll, ours, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        generated = model.generate(input_ids=x[:, :1], max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > 1


def test_synthesis_from_the_induced_domain_in_every_format_trains_in_axolotl(smollm2, induced, tmp_path):
    out, references, _ = induced
    config = {
        "base_model": str(smollm2),
        "domino": {
            "references": {"path": str(references)},
            "output_dir": str(tmp_path / "domino"),
            "synthesis": {"adapter": str(out), "num_samples": 6, "max_new_tokens": 48, "keep_unfinished": True},
            "responses": {
                "enabled": True, "max_new_tokens": 256, "keep_unfinished": True,  # SmolLM2 may ramble past 256
                "system_prompt": "Answer with one short Python function.",
            },
        },
    }
    datasets = []
    for format in ("chat_template", "alpaca", "completion"):  # the 2nd and 3rd re-merge the same shards
        config["domino"]["dataset"] = {"format": format}
        path = run_axolotl("domino", "synthesize", str(write_yaml(tmp_path / "synth.yaml", config))).stdout.splitlines()[-1]
        assert path.endswith(f".{format}.jsonl")
        datasets.append({"path": path, "type": format, "ds_type": "json"})
    manifests = list((tmp_path / "domino" / "synthesis").glob("*/manifest.json"))
    assert len(manifests) == 1  # one run folder: shards were generated once
    counts = json.loads(manifests[0].read_text())["counts"]
    kept = counts["kept"]
    assert kept == 6 - counts["dropped_empty"] >= 1 and all(len(Path(d["path"]).read_bytes().splitlines()) == kept for d in datasets)

    sft = yaml.safe_load((REPO / "example_yamls" / "quickstart.yaml").read_text())
    for key in ("plugins", "domino"):
        sft.pop(key)
    sft.update(
        base_model=str(smollm2), datasets=datasets, max_steps=1, micro_batch_size=2, bf16=False, fp16=False,
        lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, lora_embedding_kernel=False,
        output_dir=str(tmp_path / "sft"), dataset_prepared_path=str(tmp_path / "prepared"),
    )
    run_axolotl("train", str(write_yaml(tmp_path / "sft.yaml", sft)))
    (prepared,) = [p for p in (tmp_path / "prepared").iterdir() if p.is_dir()]
    assert len(load_from_disk(str(prepared))) == 3 * kept  # every row of every format was loaded
    assert (tmp_path / "sft" / "adapter_model.safetensors").exists()
