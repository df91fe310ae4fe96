"""The shared Hugging Face plumbing: padding, stop and pad ids, and the batched chat generator."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.chat import ChatGenerator
from axolotl_domino.hf import Reply, pad_right, pad_token_id
from tiny_models import build_scripted_chat_model_dir

REPLY = ['{"rating":', '"good",', '"reason":', '"scripted"}']


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory):
    return build_scripted_chat_model_dir(tmp_path_factory.mktemp("scripted"), REPLY)


def test_pad_right_and_pad_id_fallback(tiny_model_dir):
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert pad_token_id(tokenizer) == 0
    tokenizer.pad_token = None
    assert pad_token_id(tokenizer) == tokenizer.eos_token_id == 1


def test_chat_generator_replies_until_eos_in_left_padded_batches(scripted_dir):
    generator = ChatGenerator.load(str(scripted_dir), "domino.responses.model")
    short = [{"role": "user", "content": "sum"}]
    long = [{"role": "system", "content": "be short"}, {"role": "user", "content": "write a function to sort a list"}]
    assert generator([short, long], max_new_tokens=16) == [Reply(" ".join(REPLY), True)] * 2
    # Cut by the limit: the text so far, marked unfinished.
    assert generator([long], max_new_tokens=2) == [Reply(" ".join(REPLY[:2]), False)]


def test_batched_greedy_equals_one_conversation_at_a_time(tiny_model_dir):
    """Left padding must not change a reply: each conversation alone gives what it gives in the batch."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = ChatGenerator(model, AutoTokenizer.from_pretrained(tiny_model_dir), "domino.responses.model")
    conversations = [
        [{"role": "user", "content": "sum"}],
        [{"role": "user", "content": "write a function to find the max of a list of number"}],
        [{"role": "system", "content": "be short"}, {"role": "user", "content": "reverse a string"}],
    ]
    together = generator(conversations, max_new_tokens=12)
    assert together == [generator([c], max_new_tokens=12)[0] for c in conversations]


def test_a_model_without_chat_template_is_refused_naming_the_key(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="domino.filters.judge.model: the model's tokenizer has no chat template"):
        ChatGenerator(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "domino.filters.judge.model")


def test_greedy_replies_equal_plain_generate_and_sampling_is_seeded(tiny_model_dir):
    """`decode` drops rows as they end; what each row generates is still exactly what `generate` gives it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator = ChatGenerator(model, tokenizer, "domino.responses.model")
    conversations = [[{"role": "user", "content": text}] for text in ("sum", "reverse a string", "the max of a list")]
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    reference = model.generate(**batch, max_new_tokens=20, do_sample=False, eos_token_id=sorted(generator.stop),
                               pad_token_id=pad_token_id(tokenizer))[:, batch["input_ids"].shape[1]:]
    for reply, row in zip(generator(conversations, max_new_tokens=20), reference.tolist()):
        end = next((j for j, token in enumerate(row) if token in generator.stop), None)
        assert reply == Reply(tokenizer.decode(row[:end], skip_special_tokens=True).strip(), end is not None)
    sampled = generator(conversations, max_new_tokens=20, temperature=1.0, seed=7)
    assert sampled == generator(conversations, max_new_tokens=20, temperature=1.0, seed=7)
    assert sampled != generator(conversations, max_new_tokens=20, temperature=1.0, seed=8)
