"""Where train_to_dir may write: a new or empty folder, or its own interrupted run."""

import pytest

from encoderguard.models.checkpoint import CARD_FILE
from encoderguard.train.run import check_out_dir
from encoderguard.train.simclr import RESUME_FILE


def test_new_empty_and_interrupted_folders_are_accepted(tmp_path):
    check_out_dir(tmp_path / "new")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_out_dir(empty)
    resumable = tmp_path / "resumable"
    resumable.mkdir()
    (resumable / RESUME_FILE).write_bytes(b"")
    (resumable / ".model.safetensors.abc123.tmp").write_bytes(b"")  # left by a killed atomic write
    (resumable / "notes.txt").write_text("mine")
    check_out_dir(resumable)


def test_files_finished_models_and_unrelated_folders_are_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        check_out_dir(a_file)
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / CARD_FILE).write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        check_out_dir(finished)
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (unrelated / name).write_text("x")
    with pytest.raises(FileExistsError, match=r"holds no encoderguard model \(a.txt, b.txt, c.txt, ...\)"):
        check_out_dir(unrelated)
