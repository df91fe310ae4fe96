"""Tiny saved models with word-level tokenizers, built locally (no hub access), for the unit tests.

A module of its own, not conftest.py: `tests/` and `integration_tests/` both have a conftest, so
`from conftest import ...` would find whichever was imported first when the whole suite runs.
"""

from __future__ import annotations

import torch

WORDS = (
    "write a function to find the sum of list string number python return def if else for in range "
    "and or not max min sort reverse count first last even odd prime square cube total value key"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


def build_tiny_model_dir(path, seed: int = 0):
    """A saved tiny random Llama with a word-level tokenizer and a chat template (no hub access)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<s>", "<unk>", "system", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_scripted_chat_model_dir(path, reply: list[str]):
    """A real saved Llama + tokenizer whose greedy reply to any chat prompt is the words `reply`, then EOS.

    Attention and MLP outputs are zeroed, so each position sees only its own (one-hot) token embedding,
    and the LM head maps every token of the chain "assistant" -> reply[0] -> ... -> reply[-1] -> </s> to
    its successor: a fixture whose behaviour the test states, run through the real `generate`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<s>", "<unk>", "system", "user", "assistant", *WORDS, *reply]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    hidden = 4 * ((len(vocab) + 3) // 4)  # one-hot embeddings need hidden >= vocabulary
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    chain = ["assistant", *reply, "</s>"]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for current, following in zip(chain, chain[1:]):
            model.lm_head.weight[vocab[following]] = model.model.embed_tokens.weight[vocab[current]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
