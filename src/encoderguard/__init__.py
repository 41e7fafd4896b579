"""encoderguard: red-team, defend and verify ownership of self-supervised encoders.

Three questions, one library:

1. How cheaply can my encoder be stolen? (``encoderguard.attacks``)
2. Can I make stealing costlier without hurting honest users? (``encoderguard.defences``)
3. Is this suspect model a stolen copy of mine? (``encoderguard.verify``)
"""

from encoderguard.errors import EncoderGuardError

__version__ = "0.1.0"
__all__ = ["EncoderGuardError", "__version__"]
