"""The hashed text students (``text-ngram``, ``text-transformer``): contract, tokenizer, gradients, checkpoints."""

import json

import pytest
import torch

from encoderguard.errors import CheckpointError
from encoderguard.modality import modality_of
from encoderguard.models import (
    HashedNgramEncoder,
    HashedTransformerEncoder,
    ModelCard,
    TextEncoder,
    check_encoder,
    create_encoder,
    load_any,
    load_encoder,
    random_init_like,
    save_checkpoint,
)
from encoderguard.models.text_students import char_ngrams, hash_bucket, words_of

# Small settings: the tests check behaviour, not capacity.
SMALL = {
    "text-ngram": {"buckets": 1024, "dim": 8, "hidden": 16},
    "text-transformer": {"buckets": 1024, "d_model": 16, "layers": 2, "heads": 4, "ff": 32, "max_len": 16},
}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Stocks fell sharply on Monday!", "ok"]


def _student(arch, seed=0, embed_dim=12, **extra):
    torch.manual_seed(seed)
    return create_encoder(arch, input_shape=None, embed_dim=embed_dim, **{**SMALL[arch], **extra}).eval()


def _card(enc):
    return ModelCard(arch=enc.arch, arch_kwargs={}, input_shape=None, embed_dim=enc.embed_dim)


@pytest.fixture(params=sorted(SMALL))
def arch(request):
    return request.param


def test_forward_maps_strings_to_n_by_d(arch):
    enc = _student(arch)
    out = enc(TEXTS)
    assert out.shape == (3, 12) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert isinstance(enc, TextEncoder) and modality_of(enc) == "text"
    assert enc.input_shape is None and enc.embed_dim == 12 and enc.arch == arch
    assert not {"input_shape", "embed_dim"} & set(enc.arch_kwargs)
    check_encoder(enc)


def test_odd_inputs_give_finite_answers(arch):
    enc = _student(arch)
    out = enc(["   ", "!!!", "\U0001F600", "Ünïcödé", "word " * 200])
    assert out.shape == (5, 12) and torch.isfinite(out).all()
    assert enc([]).shape == (0, 12)
    assert enc("one string").shape == (1, 12)


def test_images_and_input_shapes_are_refused(arch):
    enc = _student(arch)
    with pytest.raises(ValueError, match="list of strings"):
        enc(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="input_shape must be None"):
        create_encoder(arch, input_shape=(1, 8, 8), embed_dim=8, **SMALL[arch])


def test_bad_settings_quote_the_value():
    with pytest.raises(ValueError, match="heads must divide d_model"):
        create_encoder("text-transformer", input_shape=None, embed_dim=8, d_model=30, heads=4)
    with pytest.raises(ValueError, match="buckets must be an int >= 2, got 0"):
        create_encoder("text-ngram", input_shape=None, embed_dim=8, buckets=0)
    with pytest.raises(ValueError, match="dropout"):
        create_encoder("text-transformer", input_shape=None, embed_dim=8, dropout=1.5)
    with pytest.raises(ValueError, match="bad settings for architecture 'text-ngram'"):
        create_encoder("text-ngram", input_shape=None, embed_dim=8, layers=2)


def test_tokenizer_is_fixed_across_processes_and_instances():
    # CRC-32, not Python's per-process salted hash: these values hold on every machine and run.
    assert hash_bucket("hello", 0x57, 2 ** 18) == 243037
    assert hash_bucket("<he", 0x43, 2 ** 18) == 33287
    assert hash_bucket("hello world", 0x42, 2 ** 18) == 176555
    assert words_of("Hello, World! Café  naïve x2") == ["hello", ",", "world", "!", "café", "naïve", "x2"]
    assert words_of("\uff28ello") == ["hello"]  # NFKC folds the full-width letter
    assert char_ngrams("ab", 3, 5) == ["<ab", "ab>", "<ab>"] and char_ngrams("a", 3, 3) == ["<a>"]
    one, two = _student("text-ngram", seed=0), _student("text-ngram", seed=1)
    assert one.features(TEXTS[0]) == two.features(TEXTS[0])
    t1, t2 = _student("text-transformer", seed=0), _student("text-transformer", seed=1)
    assert t1.tokenize(TEXTS) == t2.tokenize(TEXTS)
    assert [t1.token_pieces(w) for w in t1.tokenize(TEXTS)[0]] == [t2.token_pieces(w) for w in t2.tokenize(TEXTS)[0]]


def test_answers_do_not_depend_on_the_rest_of_the_batch(arch):
    enc = _student(arch)
    with torch.no_grad():
        together = enc(TEXTS)
        alone = torch.cat([enc([text]) for text in TEXTS])
        again = enc(TEXTS)
    assert torch.equal(together, again)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_tokens_are_counted_before_truncation():
    enc = _student("text-transformer", max_len=4)
    assert enc.max_tokens == 4
    assert enc.count_tokens(["one two three four five six", "Hi!", "  "]) == [6, 2, 1]
    assert enc(["one two three four five six"]).shape == (1, 12)
    assert _student("text-ngram", max_words=3).count_tokens(["a b c d e"]) == [5]


def test_gradients_reach_every_parameter(arch):
    enc = _student(arch).train()
    if arch == "text-transformer":
        enc = _student(arch, dropout=0.0).train()
    loss = enc(TEXTS).pow(2).sum()
    loss.backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_a_few_steps_fit_targets(arch):
    enc = _student(arch, **({"dropout": 0.0} if arch == "text-transformer" else {})).train()
    target = torch.nn.functional.normalize(torch.randn(3, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = 1 - torch.nn.functional.cosine_similarity(enc(TEXTS), target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_is_exact(arch, tmp_path):
    enc = _student(arch, seed=3)
    card = save_checkpoint(tmp_path / "ck", encoder=enc, card=_card(enc))
    assert card.input_shape is None and card.arch == arch and card.arch_kwargs == SMALL[arch] | {
        k: v for k, v in enc.arch_kwargs.items() if k not in SMALL[arch]}
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["card.json", "model.safetensors"]
    raw = json.loads((tmp_path / "ck" / "card.json").read_text())
    assert raw["input_shape"] is None and raw["arch"] == arch
    for loaded in (load_encoder(tmp_path / "ck"), load_any(str(tmp_path / "ck"))):
        assert type(loaded) is type(enc) and loaded.input_shape is None and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(TEXTS), enc(TEXTS))
    with pytest.raises(CheckpointError, match="text model"):
        load_any(str(tmp_path / "ck"), input_shape=(1, 8, 8))


def test_random_init_twin_differs_from_the_trained_model(arch):
    enc = _student(arch, seed=5)
    twin = random_init_like(enc, seed=0)
    assert type(twin) is type(enc) and twin.arch_kwargs == enc.arch_kwargs and twin.input_shape is None
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in enc.state_dict().items()}
    with torch.no_grad():
        assert not torch.allclose(twin(TEXTS), enc(TEXTS))
        assert torch.equal(random_init_like(enc, seed=0)(TEXTS), twin(TEXTS))


def test_text_contract_errors_name_the_sample_texts(monkeypatch):
    class Broken(HashedNgramEncoder):
        arch = "broken-text"

        def forward(self, texts):
            return super().forward(texts)[:, :3]

    from encoderguard.models import ENCODERS

    monkeypatch.setitem(ENCODERS, "broken-text", Broken)
    enc = Broken(embed_dim=8, **SMALL["text-ngram"])
    with pytest.raises(ValueError, match=r"shape \[2, 3\] for 2 sample texts, expected \[2, 8\]"):
        check_encoder(enc)


def test_default_sizes():
    ngram = HashedNgramEncoder()
    transformer = HashedTransformerEncoder(embed_dim=384)
    assert ngram.embed_dim == 128 and ngram.max_tokens == 256
    assert transformer.embed_dim == 384 and transformer.max_tokens == 128
    assert len(transformer.transformer.layers) == 2
