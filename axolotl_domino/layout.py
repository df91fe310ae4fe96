"""Every path under `domino.output_dir`: the one place that knows where each stage's files lie.

    .domino.lock, .domino.lock.owner     one run at a time per output_dir
    .ranks/rank<r>.heartbeat              rank r's sign of life while others wait on it (multi-rank runs)
    .ranks/launch-<id>/rank<r>, ok        the start-up check that every rank sees this folder
    induction/
      references-<sha>.jsonl             the references with their row index (content-addressed)
      induce-<key>.yaml, induce-<key>.log  the derived Axolotl config and the child's output
      prepared/                          Axolotl's tokenized references
      adapter/                           D* (PEFT adapter), S, metadata; domino_stage.json last
      adapter/checkpoint-<step>/, adapter/checkpoints.key   while training
    synthesis/
      synthesize-<hash>.json, synthesize-rank<r>.log       the children's config and output
      <key>/samples/samples-NNNNNN.jsonl, <key>/responses/responses-NNNNNN.jsonl   shards
      <key>/responses/responses-NNNNNN.jsonl.partial   answers of a shard still being answered (resume point)
      <key>/synthetic-<sha>.<format>.jsonl, README.md, manifest.json (last), scorecard.*
      <key>/hf_dataset/README.md, data/train-<sha>.parquet   the same rows + provenance (content-addressed)
"""

from __future__ import annotations

from pathlib import Path

from axolotl_domino.args import DominoConfig

STAGE_FILE = "domino_stage.json"  # in the adapter folder: the induction key it was trained for (written last)
CHECKPOINT_KEY_FILE = "checkpoints.key"  # the induction key the adapter folder's checkpoint-* belong to
MANIFEST_FILE = "manifest.json"  # in a synthesis run folder: written last, its presence means done
CARD_FILE = "README.md"


class SynthesisRun:
    """`synthesis/<key>/`: the shards, dataset and manifest of one set of synthesis inputs."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.samples = self.dir / "samples"
        self.responses = self.dir / "responses"
        self.manifest = self.dir / MANIFEST_FILE
        self.card = self.dir / CARD_FILE
        self.hf_dataset = self.dir / "hf_dataset"  # parquet + dataset card: `datasets.load_dataset` opens it

    def sample_shard(self, shard: int) -> Path:
        return self.samples / f"samples-{shard:06d}.jsonl"

    def response_shard(self, shard: int) -> Path:
        return self.responses / f"responses-{shard:06d}.jsonl"

    def response_journal(self, shard: int) -> Path:
        """The answers of an unfinished response shard, appended batch by batch (gone once the shard is written)."""
        return self.responses / f"responses-{shard:06d}.jsonl.partial"

    def judge_journal(self, judge: str) -> Path:
        """The judge's replies during a merge, appended batch by batch, per judge (`judge.judge_identity`); gone once
        the manifest is written."""
        return self.dir / f"judge-{judge}.jsonl.partial"

    def dataset(self, content_sha: str, format: str) -> Path:
        """Content-addressed: Axolotl caches tokenized data by path, so the name must change with the rows."""
        return self.dir / f"synthetic-{content_sha[:16]}.{format}.jsonl"


class Layout:
    """The folders and files of one `domino.output_dir`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = self.root / ".domino.lock"
        self.lock_owner = self.root / ".domino.lock.owner"
        self.induction = self.root / "induction"
        self.induction_prepared = self.induction / "prepared"
        self.adapter = self.induction / "adapter"  # D*, and its checkpoints while it trains
        self.induction_done = self.adapter / STAGE_FILE
        self.checkpoints_key = self.adapter / CHECKPOINT_KEY_FILE
        self.synthesis = self.root / "synthesis"
        self.ranks = self.root / ".ranks"

    @classmethod
    def of(cls, domino: DominoConfig) -> Layout:
        return cls(Path(domino.output_dir))

    def heartbeat(self, rank: int) -> Path:
        return self.ranks / f"rank{rank}.heartbeat"

    def launch_markers(self, launch: str) -> Path:
        return self.ranks / f"launch-{launch}"

    def indexed_references(self, references_sha: str) -> Path:
        return self.induction / f"references-{references_sha[:16]}.jsonl"

    def induction_config(self, key: str) -> Path:
        return self.induction / f"induce-{key}.yaml"

    def induction_log(self, key: str) -> Path:
        return self.induction / f"induce-{key}.log"

    def synthesis_config(self, config_digest: str) -> Path:
        return self.synthesis / f"synthesize-{config_digest}.json"

    def synthesis_log(self, rank: int) -> Path:
        return self.synthesis / f"synthesize-rank{rank}.log"

    def run(self, key: str) -> SynthesisRun:
        return SynthesisRun(self.synthesis / key)


def source_adapter(domino: DominoConfig) -> Path:
    """The D* synthesis samples from: `domino.synthesis.adapter`, else the induction stage's output."""
    return Path(domino.synthesis.adapter) if domino.synthesis.adapter else Layout.of(domino).adapter
