"""The :class:`~encoderguard.models.Encoder` contract, checked when a model is saved rather than when it is reloaded.

A checkpoint stores the weights and, in its card, the architecture's registry name and ``arch_kwargs``; reloading
rebuilds the architecture from those two and loads the weights into it. A subclass that saves fine but cannot be
rebuilt (its ``arch`` is not registered, ``arch_kwargs`` forget a constructor argument or repeat ``embed_dim``)
used to fail only on reload, often on another machine. :func:`check_encoder` rebuilds it at save time instead and
says what is wrong. The contract is written out in ``docs/models.md``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from encoderguard.modality import TEXT
from encoderguard.models.encoder import Encoder
from encoderguard.models.registry import create_encoder, encoder_class

# Recorded in the card beside arch_kwargs, and passed to the constructor separately.
RESERVED_KWARGS = ("input_shape", "embed_dim")
_CHECK_BATCH = 2
# What a text encoder is checked on: plain ASCII, then accents, digits, punctuation and an emoji.
SAMPLE_TEXTS = ("The quick brown fox jumps over the lazy dog.",
                "Café naïve 12345 -- punctuation?! and an emoji \U0001F600")


def check_encoder(encoder: nn.Module) -> None:
    """Check that ``encoder`` can be saved and rebuilt from its card, and returns ``[N, embed_dim]`` finite floats.

    Checks, in order: it is an :class:`Encoder`; ``arch`` names this very class in the registry (built in or
    an installed plugin); ``input_shape`` and ``embed_dim`` are valid; ``arch_kwargs`` is a JSON object without
    ``input_shape``/``embed_dim``, and the architecture rebuilt from it (after a JSON round trip, as a reload
    does) has the same state-dict keys and shapes; ``forward`` on a batch of 2 images returns one finite float
    tensor ``[2, embed_dim]`` (a text encoder, ``modality = "text"``, has ``input_shape = None`` and is run on
    :data:`SAMPLE_TEXTS` instead). The global random state is left as it was, and so is the module's train/eval mode.

    Args:
        encoder: the encoder about to be saved.

    Raises:
        ValueError: a broken part of the contract, named in the message with what to fix.
    """
    if not isinstance(encoder, Encoder):
        raise ValueError(f"only an encoderguard.models.Encoder can be saved as a checkpoint, got "
                         f"{type(encoder).__name__}")
    cls_name = type(encoder).__name__
    arch = getattr(encoder, "arch", None)
    if not isinstance(arch, str) or not arch or arch == Encoder.arch:
        raise ValueError(f"{cls_name} has no architecture name: set the class attribute arch = 'NAME' and register "
                         "the class under that name (ENCODERS or an encoderguard.encoders entry point)")
    try:
        registered = encoder_class(arch)
    except ValueError as exc:
        raise ValueError(f"{cls_name}.arch = {arch!r} is not registered, so the checkpoint could not be reloaded: "
                         f"{exc}; add it to encoderguard.models.ENCODERS or declare an entry point") from exc
    if registered is not type(encoder):
        raise ValueError(f"{cls_name}.arch = {arch!r} but that name is registered for "
                         f"{registered.__module__}.{registered.__qualname__}: a reload would build another class; "
                         "give the class its own name and register it")
    input_shape, embed_dim = encoder.input_shape, encoder.embed_dim
    if encoder.modality == TEXT:
        if input_shape is not None:
            raise ValueError(f"{cls_name} is a text encoder (modality 'text'): input_shape must be None, got "
                             f"{input_shape!r}")
    elif (not isinstance(input_shape, tuple) or len(input_shape) != 3
            or not all(isinstance(v, int) and v >= 1 for v in input_shape)):
        raise ValueError(f"{cls_name}.input_shape must be a tuple (C, H, W) of positive ints, got {input_shape!r}")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f"{cls_name}.embed_dim must be a positive int, got {embed_dim!r}")
    kwargs = _json_kwargs(cls_name, encoder.arch_kwargs)
    _check_rebuild(encoder, arch, kwargs)
    _check_forward(encoder)


def _json_kwargs(cls_name: str, arch_kwargs: Any) -> dict[str, Any]:
    if not isinstance(arch_kwargs, dict) or not all(isinstance(k, str) for k in arch_kwargs):
        raise ValueError(f"{cls_name}.arch_kwargs must be a dict with string keys, got {arch_kwargs!r}")
    reserved = [k for k in RESERVED_KWARGS if k in arch_kwargs]
    if reserved:
        raise ValueError(f"{cls_name}.arch_kwargs must not hold {reserved}: the card records input_shape and "
                         "embed_dim on their own and passes them to the constructor separately "
                         f"(arch_kwargs = {arch_kwargs!r})")
    for key, value in arch_kwargs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{cls_name}.arch_kwargs[{key!r}] = {value!r} cannot be written to the JSON card "
                             f"({exc}); record plain numbers, strings, booleans, lists or dicts") from exc
    loaded: dict[str, Any] = json.loads(json.dumps(arch_kwargs))
    return loaded


def _check_rebuild(encoder: Encoder, arch: str, kwargs: dict[str, Any]) -> None:
    cls_name = type(encoder).__name__
    try:
        rebuilt = _rebuild(arch, encoder.input_shape, encoder.embed_dim, kwargs)
    except ValueError as exc:
        raise ValueError(f"{cls_name} cannot be rebuilt from its card (arch {arch!r}, arch_kwargs {kwargs}): "
                         f"{exc}; arch_kwargs must hold every constructor argument besides input_shape and "
                         "embed_dim") from exc
    mine = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    hint = ("; arch_kwargs must hold every constructor argument that shapes the model "
            f"(arch_kwargs = {encoder.arch_kwargs!r})")
    missing = sorted(set(mine) - set(theirs))
    if missing:
        raise ValueError(f"{cls_name} rebuilt from its card lacks tensor(s) {_few(missing)}{hint}")
    extra = sorted(set(theirs) - set(mine))
    if extra:
        raise ValueError(f"{cls_name} rebuilt from its card has extra tensor(s) {_few(extra)}{hint}")
    for name, shape in mine.items():
        if theirs[name] != shape:
            raise ValueError(f"{cls_name} rebuilt from its card has {name} of shape {list(theirs[name])}, but this "
                             f"encoder's is {list(shape)}{hint}")


def _rebuild(arch: str, input_shape: tuple[int, int, int] | None, embed_dim: int, kwargs: dict[str, Any]) -> nn.Module:
    # Built on the meta device (no memory, no initialisation) where the constructor allows it, and inside a forked
    # random state either way, so that saving never shifts the random stream of the run that saves.
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return create_encoder(arch, input_shape=input_shape, embed_dim=embed_dim, **kwargs)
        except (RuntimeError, NotImplementedError):
            return create_encoder(arch, input_shape=input_shape, embed_dim=embed_dim, **kwargs)


@torch.no_grad()
def _check_forward(encoder: Encoder) -> None:
    cls_name = type(encoder).__name__
    device = next((t.device for t in (*encoder.parameters(), *encoder.buffers())), torch.device("cpu"))
    text = encoder.modality == TEXT
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x: torch.Tensor | list[str] = (list(SAMPLE_TEXTS[:_CHECK_BATCH]) if text else
                                           torch.rand(_CHECK_BATCH, *encoder.input_shape, device=device))
            out = encoder(x)
    finally:
        encoder.train(was_training)
    expected = [_CHECK_BATCH, encoder.embed_dim]
    inputs = (f"{_CHECK_BATCH} sample texts" if text else
              f"{_CHECK_BATCH} images of shape {list(encoder.input_shape)}")
    if not isinstance(out, torch.Tensor):
        keys = f" with keys {list(out)[:6]}" if isinstance(out, dict) else ""
        what = "a list of N strings" if text else "[N, C, H, W] images"
        raise ValueError(f"{cls_name}.forward returned a {type(out).__name__}{keys}, not a tensor: forward must map "
                         f"{what} to one float tensor [N, embed_dim]; return the representation itself")
    if list(out.shape) != expected:
        raise ValueError(f"{cls_name}.forward returned shape {list(out.shape)} for {inputs}, expected {expected} "
                         f"(embed_dim = {encoder.embed_dim})")
    if not out.is_floating_point():
        raise ValueError(f"{cls_name}.forward returned dtype {out.dtype}, expected a float tensor")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{cls_name}.forward returned NaN or infinite values on "
                         f"{'sample texts' if text else 'random images in [0, 1]'}")


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
