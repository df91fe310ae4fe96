"""The scorecard: the files it writes, tiny sets, the held-out file and its settings."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from axolotl_domino.args import ScoreConfig
from axolotl_domino.files import DataFileError
from axolotl_domino.score import run_scorecard, scorecard
from axolotl_domino.score.scorecard import load_heldout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TOPICS = ["python list", "string reverse", "prime number", "dictionary key", "sort tuple", "binary search"]


def _texts(seed, n, prefix="write a function to"):
    rng = random.Random(seed)
    extra = "quickly carefully recursively iteratively with without a loop comprehension".split()
    return [f"{prefix} {rng.choice(TOPICS)} {' '.join(rng.sample(extra, 3))} {i}" for i in range(n)]


def test_scorecard_writes_json_markdown_and_pngs(tmp_path, hash_embedder):
    refs = _texts(0, 12)
    synthetic = _texts(1, 40) + [refs[0]]
    heldout = _texts(2, 20)
    card = scorecard(synthetic, refs, heldout, ScoreConfig(), tmp_path, embedder=hash_embedder)

    for name in ("scorecard.json", "scorecard.md", "projection.png", "lengths.png"):
        assert (tmp_path / name).is_file()
    for name in ("projection.png", "lengths.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temp files

    saved = json.loads((tmp_path / "scorecard.json").read_text())
    assert saved == card
    assert {"diversity", "memorization", "fidelity", "lengths", "plots", "notes", "counts", "settings"} <= set(card)
    assert set(card["diversity"]) == {"synthetic", "synthetic_matched", "references", "held-out"}
    assert card["diversity"]["synthetic_matched"]["n"] == card["diversity"]["references"]["n"] == 12
    assert {"distinct_1", "distinct_2", "distinct_3", "self_bleu", "vendi_score", "mean_pairwise_cosine"} <= set(
        card["diversity"]["synthetic"]
    )
    mem = card["memorization"]
    assert mem["nearest_reference_cosine"]["max"] == pytest.approx(1.0, abs=1e-5)
    assert mem["exact_copies"] == 1 and mem["longest_common_substring"]["max_fraction"] == 1.0
    assert mem["share_above_threshold"] >= 1 / 41
    fid = card["fidelity"]
    assert card["fidelity_target"] == fid["target"] == "held-out"
    assert fid["classifier_auc"] is not None and fid["mmd"] is not None and fid["frechet_distance"] is not None
    assert card["plots"]["projection_method"] == "t-SNE"
    assert card["counts"]["synthetic"] == {"total": 41, "scored": 41}

    markdown = (tmp_path / "scorecard.md").read_text()
    assert "0.5 = a classifier cannot tell synthetic from held-out" in markdown
    assert "Vendi score" in markdown and "![" in markdown and "projection.png" in markdown


def test_scorecard_without_heldout_scores_against_references_and_says_so(tmp_path, hash_embedder):
    settings = ScoreConfig(max_samples=20, projection="pca")
    card = scorecard(_texts(1, 50), _texts(0, 10), None, settings, tmp_path, embedder=hash_embedder)
    assert card["fidelity_target"] == "references" and "held-out" not in card["diversity"]
    assert card["counts"]["synthetic"] == {"total": 50, "scored": 20}
    assert card["plots"]["projection_method"] == "PCA"
    assert any("measured against the references" in note for note in card["notes"])
    assert any("20 of 50" in note for note in card["notes"])
    assert "Fidelity (does it look like the references?)" in (tmp_path / "scorecard.md").read_text()


@pytest.mark.parametrize("n_syn,n_ref", [(0, 0), (0, 2), (1, 1), (2, 1), (3, 3)])
def test_tiny_sets_report_nulls_and_never_crash(tmp_path, n_syn, n_ref, hash_embedder):
    card = scorecard(_texts(1, n_syn), _texts(0, n_ref), [], ScoreConfig(), tmp_path, embedder=hash_embedder)
    assert json.loads((tmp_path / "scorecard.json").read_text()) == card
    assert (tmp_path / "projection.png").read_bytes()[:8] == PNG_MAGIC
    assert card["fidelity"]["classifier_auc"] is None and card["notes"]
    if n_syn < 2:
        assert card["diversity"]["synthetic"]["self_bleu"] is None
        assert card["fidelity"]["frechet_distance"] is None
    if n_syn == 0 or n_ref == 0:
        assert card["memorization"]["nearest_reference_cosine"] is None
    assert "n/a" in (tmp_path / "scorecard.md").read_text()


def test_run_scorecard_reads_heldout_and_respects_enabled(tmp_path, hash_embedder):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"body": t}) + "\n" for t in _texts(2, 8)) + "\n")
    settings = ScoreConfig(heldout_path=str(heldout), heldout_field="body", projection="pca")
    card = run_scorecard(settings, _texts(1, 10), _texts(0, 6), tmp_path / "out", embedder=hash_embedder)
    assert card["fidelity_target"] == "held-out" and card["counts"]["held-out"]["total"] == 8
    assert run_scorecard(ScoreConfig(enabled=False), ["a"], ["b"], tmp_path / "off") is None
    assert not (tmp_path / "off").exists()


def test_heldout_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataFileError, match=r"bad.jsonl:2: no field 'text' \(keys: other\); set domino.score.heldout_field"):
        load_heldout(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataFileError, match="domino.score.heldout_path: .*empty.jsonl holds no samples"):
        load_heldout(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"\n')
    with pytest.raises(DataFileError, match="broken.jsonl:1: invalid JSON"):
        load_heldout(tmp_path / "broken.jsonl")
    (tmp_path / "good.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert load_heldout(tmp_path / "good.jsonl") == ["a", "b"]


def test_score_config_defaults_and_validation(tmp_path):
    settings = ScoreConfig()
    assert settings.model_dump() == {
        "enabled": True, "embedding_model": None, "heldout_path": None, "heldout_field": "text",
        "max_samples": 2000, "memorization_threshold": 0.9, "projection": "auto", "seed": 0,
    }
    with pytest.raises(ValidationError, match="domino.score.heldout_path: .* does not exist"):
        ScoreConfig(heldout_path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ScoreConfig(max_sample=10)
    with pytest.raises(ValidationError, match="memorization_threshold"):
        ScoreConfig(memorization_threshold=1.5)
    for field in ScoreConfig.model_fields.values():
        assert field.description
