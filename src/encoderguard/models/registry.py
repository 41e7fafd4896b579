"""Encoder registry: ``create_encoder(name, ...)``, built-in architectures plus those other packages declare.

Another package adds an architecture by declaring an entry point in the group ``encoderguard.encoders`` whose name
is the architecture's registry name and whose object is the :class:`~encoderguard.models.Encoder` subclass, e.g. in
its ``pyproject.toml``::

    [project.entry-points."encoderguard.encoders"]
    tinynet = "mypackage.tinynet:TinyNet"

Nothing is imported when encoderguard is imported: the registry looks an entry point up, and imports its module,
only when asked for a name that is not built in (:func:`encoder_class`). A name in :data:`ENCODERS` always wins
over an entry point of the same name.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from encoderguard.models.convnet import ConvNet
from encoderguard.models.encoder import Encoder
from encoderguard.models.mlp import MLPEncoder
from encoderguard.models.resnet import ResNet18
from encoderguard.models.text_students import HashedNgramEncoder, HashedTransformerEncoder

ENCODERS: dict[str, type[Encoder]] = {"convnet": ConvNet, "resnet18": ResNet18, "mlp": MLPEncoder,
                                      "text-ngram": HashedNgramEncoder, "text-transformer": HashedTransformerEncoder}
ENTRY_POINT_GROUP = "encoderguard.encoders"


def create_encoder(name: str, *, input_shape: tuple[int, int, int] | None, **kwargs: Any) -> Encoder:
    """Build an encoder by registry name (built in or declared by an installed package).

    ``input_shape`` is ``(C, H, W)`` for an image architecture and ``None`` for a text one (``text-ngram``,
    ``text-transformer``).

    Raises:
        ValueError: unknown name (lists the built-in names and the installed plugins) or bad settings.
    """
    cls = encoder_class(name)
    try:
        return cls(input_shape=input_shape, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad settings for architecture {name!r}: {exc}") from exc


def encoder_class(name: str) -> type[Encoder]:
    """The class registered as ``name``: from :data:`ENCODERS`, else from an entry point of :data:`ENTRY_POINT_GROUP`.

    Raises:
        ValueError: no such name (the message lists the choices), or the plugin fails to import, is not an
            :class:`Encoder` subclass, or declares another ``arch`` than its entry-point name.
    """
    if name in ENCODERS:
        return ENCODERS[name]
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        raise ValueError(f"unknown architecture {name!r}; {available_architectures()}")
    if len({ep.value for ep in matches}) > 1:
        raise ValueError(f"architecture {name!r} is declared by several installed packages "
                         f"({', '.join(sorted(_dist_name(ep) for ep in matches))}); uninstall all but one")
    ep = matches[0]
    where = f"entry point {name} = {ep.value} (package {_dist_name(ep)})"
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin's import error of any kind: report it as one line, with its origin
        raise ValueError(f"architecture {name!r}: {where} failed to load: {exc.__class__.__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        raise ValueError(f"architecture {name!r}: {where} is not an encoderguard.models.Encoder subclass")
    if getattr(cls, "arch", None) != name:
        raise ValueError(f"architecture {name!r}: {where} declares arch = {getattr(cls, 'arch', None)!r}; the class "
                         "attribute and the entry-point name must be the same")
    return cls


def plugin_architectures() -> dict[str, str]:
    """Architectures declared by installed packages: name -> ``"module:Class (package)"`` (nothing imported)."""
    return {ep.name: f"{ep.value} ({_dist_name(ep)})" for ep in sorted(_entry_points(), key=lambda e: e.name)}


def available_architectures() -> str:
    """One sentence naming the built-in architectures and the installed plugins, for error messages."""
    plugins = plugin_architectures()
    listed = ", ".join(f"{name} from {where}" for name, where in plugins.items()) or "none"
    return (f"built in: {', '.join(ENCODERS)}; installed plugins (entry point group {ENTRY_POINT_GROUP}): "
            f"{listed}")


def check_arch(name: str) -> None:
    """Raise ValueError listing the choices if ``name`` is not a registered architecture."""
    encoder_class(name)


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(dist.metadata["Name"]) if dist is not None else "unknown package"
