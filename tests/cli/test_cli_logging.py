"""Log messages and warnings reach stderr whatever --no-progress says; --quiet keeps warnings only."""

import json
import logging
import warnings

import pytest

from encoderguard.cli.common import configure_logging
from encoderguard.cli.main import main

TRAIN = ["train", "--data", "digits", "--train-size", "100", "--epochs", "1", "--width", "4", "--embed-dim", "8",
         "--batch-size", "50", "--no-probe", "--no-progress", "--json"]


def test_seed_zero_watermark_warning_survives_no_progress(tmp_path, capsys):
    code = main([*TRAIN, "--watermark", "--out", str(tmp_path / "wm")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["train_images"] == 100  # stdout stays one JSON object
    assert "warning: watermarking with the default seed 0" in err
    assert "training convnet on digits:owner-train" in err  # informational lines are logged too


def test_quiet_keeps_warnings_and_drops_information(tmp_path, capsys):
    code = main([*TRAIN, "--watermark", "--quiet", "--out", str(tmp_path / "wm")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "warning: watermarking with the default seed 0" in err
    assert "training convnet" not in err


def test_library_warns_through_the_warnings_module(tmp_path):
    from encoderguard.data import SplitSpec
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    with pytest.warns(UserWarning, match="default seed 0"):
        train_to_dir(data=SplitSpec("digits", "owner-train", 0, 100), arch="convnet",
                     arch_kwargs={"width": 4, "depth": 2, "embed_dim": 8},
                     config=SimCLRConfig(epochs=1, batch_size=50, watermark_weight=0.25),
                     out_dir=tmp_path / "wm", probe=False, progress=False)


def test_configure_logging_is_idempotent_and_sets_the_level(capsys):
    logger = logging.getLogger("encoderguard")
    try:
        configure_logging()
        configure_logging(verbose=1)
        logging.getLogger("encoderguard.some.module").debug("hello %s", "there")
        assert capsys.readouterr().err == "hello there\n"  # one handler, not two
        configure_logging(quiet=True)
        logging.getLogger("encoderguard.x").info("hidden")
        warnings.warn("careful", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == "warning: careful\n"
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
