"""StealingAttack: exact budgets, one payment per query, crash-safe resume, siamese accounting, projection."""

from __future__ import annotations

import hashlib

import pytest
import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import QueryCache, QueryCacheError, QueryPlan, StealingAttack
from encoderguard.data import ImageSet, SplitSpec, load_split
from encoderguard.errors import APIError, DataError

TINY = {"width": 4, "depth": 2, "pool": "avg"}


def _victim(dim: int = 16):
    torch.manual_seed(0)
    from encoderguard.models import create_encoder

    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=dim, width=4, depth=2).eval()


class RecordingAPI:
    """Wraps an API: records the digest of every image it is asked to embed; can fail after k batches."""

    def __init__(self, inner, *, fail_after: int | None = None) -> None:
        self.inner, self.fail_after = inner, fail_after
        self.digests: list[str] = []
        self.batches = 0

    dim = property(lambda self: self.inner.dim)
    input_shape = property(lambda self: self.inner.input_shape)
    queries_used = property(lambda self: len(self.digests))

    def embed(self, inputs):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise APIError("connection reset (simulated crash)")
        self.batches += 1
        out = self.inner.embed(inputs)
        self.digests += [hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() for x in inputs]
        return out


@pytest.fixture(scope="module")
def queries() -> ImageSet:
    return load_split(SplitSpec("digits", "query", 0, 200))


def _attack(api, tmp_path, name="cache", **kw):
    settings = {"loss": "mse", "budget": 100, "epochs": 1, "batch_size": 32, "query_batch": 16,
                "arch_kwargs": TINY, "progress": False}
    settings.update(kw)
    return StealingAttack(api, cache_dir=tmp_path / name, **settings)


def test_budget_is_paid_exactly_once_per_input(tmp_path, queries):
    api = RecordingAPI(LocalAPI(_victim()))
    result = _attack(api, tmp_path, budget=77).extract(queries)
    assert api.queries_used == 77 == result.queries_paid == result.queries_new
    assert len(set(api.digests)) == 77  # every input at most once
    assert api.batches == 5  # ceil(77 / 16)
    again = _attack(api, tmp_path, budget=77, loss="infonce").extract(queries)  # other loss, same cache
    assert api.queries_used == 77 and again.queries_new == 0 and again.queries_cached == 77
    smaller = _attack(api, tmp_path, budget=30).extract(queries)  # a smaller budget reuses the prefix
    assert api.queries_used == 77 and smaller.queries_paid == 30
    bigger = _attack(api, tmp_path, budget=90).extract(queries)  # a bigger one pays only the difference
    assert api.queries_used == 90 and bigger.queries_new == 13 and len(set(api.digests)) == 90


def test_resume_after_crash_pays_nothing_twice_and_matches_uninterrupted(tmp_path, queries):
    crashing = RecordingAPI(LocalAPI(_victim()), fail_after=3)
    with pytest.raises(APIError, match="48 of 100 answers are cached .* rerun to resume"):
        _attack(crashing, tmp_path, name="resumed").extract(queries)
    resumed_api = RecordingAPI(LocalAPI(_victim()))
    resumed = _attack(resumed_api, tmp_path, name="resumed").extract(queries)
    assert resumed.queries_new == 52 and resumed.queries_cached == 48
    assert not set(crashing.digests) & set(resumed_api.digests)
    assert len(crashing.digests) + len(resumed_api.digests) == 100
    straight = _attack(RecordingAPI(LocalAPI(_victim())), tmp_path, name="straight").extract(queries)
    fingerprint = _attack(resumed_api, tmp_path, name="x").open_cache(queries).fingerprint
    a = QueryCache(tmp_path / "resumed", fingerprint=fingerprint).read(100)
    b = QueryCache(tmp_path / "straight", fingerprint=fingerprint).read(100)
    for name in ("sources", "views", "input_sha256", "answers"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for p, q in zip(resumed.encoder.parameters(), straight.encoder.parameters(), strict=True):  # same data -> same copy
        assert torch.allclose(p, q)


def test_corrupted_or_foreign_cache_is_a_clear_error(tmp_path, queries):
    api = LocalAPI(_victim())
    _attack(api, tmp_path, budget=40).extract(queries)
    segment = sorted((tmp_path / "cache").glob("answers-*.safetensors"))[1]
    segment.write_bytes(segment.read_bytes()[:50])
    with pytest.raises(QueryCacheError, match=f"{segment.name}: corrupted query cache file.*delete it"):
        _attack(api, tmp_path, budget=40).extract(queries)
    segment.unlink()  # deleting the bad segment re-pays exactly its 16 positions
    used = api.queries_used
    result = _attack(api, tmp_path, budget=40).extract(queries)
    assert result.queries_new == 16 and api.queries_used == used + 16
    with pytest.raises(QueryCacheError, match="filled with other settings .*query_data"):
        _attack(api, tmp_path, budget=40).extract(queries.subset(slice(0, 300), name="digits:other"))
    with pytest.raises(QueryCacheError, match="filled with other settings .*dim"):
        _attack(LocalAPI(_victim(dim=8)), tmp_path, budget=40).extract(queries)


def test_tampered_answer_record_is_detected(tmp_path, queries):
    from safetensors.torch import load_file, save_file

    api = LocalAPI(_victim())
    _attack(api, tmp_path, budget=20).extract(queries)
    path = sorted((tmp_path / "cache").glob("answers-*.safetensors"))[0]
    tensors = load_file(path)
    tensors["input_sha256"][3, 0] ^= 1
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    save_file(tensors, path, metadata=meta)
    with pytest.raises(QueryCacheError, match="position 3 was paid for another input"):
        _attack(api, tmp_path, budget=20).extract(queries)


def test_siamese_mode_counts_every_view(tmp_path, queries):
    api = RecordingAPI(LocalAPI(_victim()))
    result = _attack(api, tmp_path, budget=50, mode="siamese", views=2, augmentation="simclr").extract(queries)
    assert api.queries_used == 50 == result.queries_paid and len(set(api.digests)) == 50
    plan = QueryPlan(len(queries), mode="siamese", views=2, augmentation="simclr")
    sources, views = plan.sources(0, 50)
    assert len(set(sources.tolist())) == 25 and views.tolist() == [0, 1] * 25
    clean = {hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() for x in queries.float(sources)}
    assert not clean & set(api.digests)  # the victim saw augmented views only
    # views are a function of the position, not of how positions are batched
    whole = plan.inputs(queries, 0, 300)
    pieces = torch.cat([plan.inputs(queries, a, b) for a, b in ((0, 7), (7, 260), (260, 300))])
    assert torch.equal(whole, pieces)
    clean_views = RecordingAPI(LocalAPI(_victim()))  # in clean mode, views are training views: no extra queries
    _attack(clean_views, tmp_path, name="clean-views", budget=20, views=2).extract(queries)
    assert clean_views.queries_used == 20 and len(set(clean_views.digests)) == 20


def test_projection_when_dimensions_differ(tmp_path, queries):
    from encoderguard.attacks import evaluate_copy, victim_reference
    from encoderguard.models.checkpoint_probe import probe_sets

    victim = _victim(dim=16)
    result = _attack(LocalAPI(victim), tmp_path, embed_dim=8, budget=64).extract(queries)
    assert result.encoder.embed_dim == 8 and result.projector is not None
    assert result.projector(result.encoder(queries.float(slice(0, 4)))).shape == (4, 16)
    train, test = probe_sets("digits")
    evaluation = evaluate_copy(result.encoder, victim_reference(victim, train, test), train, test,
                               projector=result.projector)
    assert -1 <= evaluation.fidelity_cosine <= 1 and evaluation.eval_queries_paid == 0
    same = _attack(LocalAPI(victim), tmp_path, budget=64).extract(queries)
    assert same.projector is None and same.encoder.embed_dim == 16


def test_user_errors_name_the_problem(tmp_path, queries):
    api = LocalAPI(_victim())
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 0"):
        _attack(api, tmp_path, budget=0)
    with pytest.raises(ValueError, match="unknown loss 'nope'; choose one of: barlow, cosine"):
        _attack(api, tmp_path, loss="nope")
    with pytest.raises(DataError, match=r"shape \(1, 28, 28\) but the victim API takes \(1, 8, 8\)"):
        big = ImageSet(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), "big")
        _attack(api, tmp_path, budget=2).extract(big)
    with pytest.raises(DataError, match="budget 1000 exceeds the 674 distinct queries"):
        _attack(api, tmp_path, budget=1000).extract(queries)
    with pytest.raises(APIError, match="rerun to resume.*simulated crash"):
        _attack(RecordingAPI(api, fail_after=0), tmp_path, name="c2").extract(queries)


def test_copy_never_starts_from_the_initial_weights_of_a_same_seed_encoder(tmp_path):
    from encoderguard.models import create_encoder

    for seed in (0, 3):
        attack = _attack(LocalAPI(_victim()), tmp_path, seed=seed)
        copy, _ = attack.build_copy((1, 8, 8), 16)
        torch.manual_seed(seed)  # what `train --seed S` does before building its encoder
        owner_init = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, **TINY)
        first = next(iter(copy.state_dict()))
        assert not torch.equal(copy.state_dict()[first], owner_init.state_dict()[first])
        again, _ = attack.build_copy((1, 8, 8), 16)  # but the copy's own initialisation is reproducible
        assert torch.equal(again.state_dict()[first], copy.state_dict()[first])


@pytest.mark.parametrize("n, epochs", [(32, 10), (16, 1), (32, 1), (64, 5)])
def test_train_copy_runs_with_few_optimiser_steps(n, epochs):
    """20 steps once divided by zero in the learning-rate warm-up; 1 or 2 steps have no schedule at all."""
    from encoderguard.attacks.losses import create_loss
    from encoderguard.attacks.stealing import train_copy
    from encoderguard.models import create_encoder

    torch.manual_seed(0)
    copy = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=8, width=4, depth=2)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    losses = train_copy(copy, images, torch.randn(n, 8), loss=create_loss("mse"), epochs=epochs, batch_size=16,
                        progress=False)
    assert len(losses) == epochs and all(torch.isfinite(torch.tensor(losses)))
