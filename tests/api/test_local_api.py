"""LocalAPI: the in-process reference implementation of the EmbeddingAPI protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from api_helpers import DIM, INPUT_SHAPE, TinyEncoder, images
from torch import nn

from encoderguard.api import EmbeddingAPI, LocalAPI
from encoderguard.errors import APIError


def test_matches_the_encoder_in_eval_mode_without_grad(encoder: TinyEncoder) -> None:
    encoder.train()
    api = LocalAPI(encoder)
    x = images(5)
    out = api.embed(x)
    assert not encoder.training
    with torch.no_grad():
        expected = encoder(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.shape == (5, DIM)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert api.dim == DIM and api.input_shape == INPUT_SHAPE
    assert isinstance(api, EmbeddingAPI)


def test_eval_mode_matters_for_dropout() -> None:
    class Dropper(TinyEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(super().forward(x))

    model = Dropper()
    model.train()
    api = LocalAPI(model)
    x = images(4)
    torch.testing.assert_close(api.embed(x), api.embed(x), rtol=0, atol=0)


def test_chunks_by_batch_size_and_keeps_order(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder, batch_size=3)
    x = images(10)
    out = api.embed(x)
    assert encoder.calls == [3, 3, 3, 1]
    torch.testing.assert_close(out, LocalAPI(TinyEncoder(), batch_size=256).embed(x))


def test_counts_answered_images_only(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder)
    api.embed(images(3))
    api.embed(images(4))
    with pytest.raises(APIError):
        api.embed(torch.full((2, *INPUT_SHAPE), float("nan")))
    assert api.queries_used == 7


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros((2, *INPUT_SHAPE), dtype=torch.int64), "floating-point dtype"),
        (torch.zeros((2, 3, 8, 8)), "shape [N, 1, 8, 8]"),
        (torch.zeros((2, 8, 8)), "shape [N, 1, 8, 8]"),
        (torch.zeros((0, *INPUT_SHAPE)), "empty batch"),
        (torch.full((2, *INPUT_SHAPE), float("nan")), "NaN or infinite"),
        (torch.full((2, *INPUT_SHAPE), float("inf")), "NaN or infinite"),
        (torch.full((2, *INPUT_SHAPE), 1.5), "must lie in [0, 1]"),
        (torch.full((2, *INPUT_SHAPE), -0.1), "must lie in [0, 1]"),
        ([[0.0]], "must be a torch.Tensor"),
    ],
)
def test_rejects_bad_inputs(encoder: TinyEncoder, bad: object, message: str) -> None:
    api = LocalAPI(encoder)
    with pytest.raises(APIError, match=None) as info:
        api.embed(bad)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert info.value.status == 422
    assert encoder.calls == []


def test_accepts_numpy_and_float64(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder)
    x = images(3)
    ref = api.embed(x)
    torch.testing.assert_close(api.embed(x.numpy()), ref)
    torch.testing.assert_close(api.embed(x.double()), ref)


def test_accepts_uint8_and_a_single_image_like_the_http_api(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder)
    x = images(3, uint8=True)  # exact multiples of 1/255
    ref = api.embed(x)
    pixels = torch.round(x * 255).to(torch.uint8)
    torch.testing.assert_close(api.embed(pixels), ref, rtol=0, atol=0)  # scaled by 1/255 as on the uint8 wire
    torch.testing.assert_close(api.embed(pixels.numpy()), ref, rtol=0, atol=0)
    one = api.embed(x[1])  # [C, H, W]: a batch of one
    assert one.shape == (1, DIM)
    torch.testing.assert_close(one, ref[1:2])
    torch.testing.assert_close(api.embed(pixels[2]), ref[2:3], rtol=0, atol=0)
    torch.testing.assert_close(api.embed(x[0].numpy()), ref[0:1])
    assert api.queries_used == 3 + 3 + 3 + 3


@pytest.mark.parametrize("output", [
    lambda z: {"last_hidden_state": z, "pooler_output": z},
    lambda z: (z, z),
])
def test_an_encoder_returning_several_outputs_gets_a_clear_error(output) -> None:
    class HFStyle(TinyEncoder):
        def forward(self, x: torch.Tensor):  # type: ignore[override]
            return output(super().forward(x))

    api = LocalAPI(HFStyle())
    contract = r"not a tensor: an encoder must map \[N, C, H, W\] images to one tensor"
    with pytest.raises(APIError, match=contract) as info:
        api.embed(images(2))
    assert info.value.status == 500 and api.queries_used == 0
    if isinstance(output(torch.zeros(1)), dict):
        assert "pooler_output" in str(info.value)


def test_applies_defences_in_order_with_the_key(encoder: TinyEncoder) -> None:
    seen: list[tuple[str, str, int]] = []

    class Add:
        def __init__(self, name: str, value: float) -> None:
            self.name, self.value = name, value

        def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
            seen.append((self.name, key, int(inputs.shape[0])))
            return embeddings * 2 + self.value

    api = LocalAPI(encoder, defences=[Add("a", 1.0), Add("b", 10.0)], key="owner")
    x = images(3)
    raw = LocalAPI(TinyEncoder()).embed(x)
    torch.testing.assert_close(api.embed(x), (raw * 2 + 1) * 2 + 10)
    api.embed(x, key="k1")
    assert seen == [("a", "owner", 3), ("b", "owner", 3), ("a", "k1", 3), ("b", "k1", 3)]


def test_a_defence_returning_the_wrong_shape_is_an_error(encoder: TinyEncoder) -> None:
    def truncate(embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        return embeddings[:, :4]

    api = LocalAPI(encoder, defences=[truncate])  # type: ignore[list-item]
    with pytest.raises(APIError, match=r"defence chain returned shape \[2, 4\]") as info:
        api.embed(images(2))
    assert info.value.status == 500
    assert api.queries_used == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch_size must be a positive int, got 0"), ({"key": ""}, "key must be"),
     ({"defences": [3]}, "callable postprocessor, got 3")],
)
def test_settings_are_validated(encoder: TinyEncoder, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        LocalAPI(encoder, **kwargs)
    assert message in str(info.value)


def test_encoder_must_declare_its_contract() -> None:
    with pytest.raises(ValueError, match="embed_dim must be a positive int, got None"):
        LocalAPI(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        LocalAPI(np.zeros(3))  # type: ignore[arg-type]


def test_the_package_imports_without_the_server_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn', 'httpx', 'starlette', 'PIL'):\n"
        "    sys.modules[name] = None  # makes 'import name' fail\n"
        "import encoderguard.api as api\n"
        "assert api.LocalAPI and api.EmbeddingAPI and api.HTTPEmbeddingAPI\n"
        "try:\n"
        "    api.create_app\n"
        "except ImportError as exc:\n"
        "    assert \"pip install 'encoderguard[server]'\" in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('create_app imported without fastapi')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
