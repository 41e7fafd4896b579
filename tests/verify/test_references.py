"""Tests of reference-model sets: building them for a tiny digits owner, registering third-party models, loading."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tests.conftest import tiny_encoder
from tests.verify.owners import OWNER_SEED, save_owner

from encoderguard.api import HTTPEmbeddingAPI, LocalAPI
from encoderguard.errors import CheckpointError, DataError
from encoderguard.models import ModelCard, load_checkpoint, read_card, save_checkpoint
from encoderguard.verify.references import (
    MANIFEST_FILE,
    PLAN,
    ReferenceSet,
    build_references,
    owner_reference_dir,
    plan_references,
    register_with_owner,
)

IMAGES = 64  # training images per reference: a few optimiser steps each


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_owner(tmp_path_factory.mktemp("refs-owner") / "owner", steps=0)


@pytest.fixture(scope="module")
def built(owner: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ReferenceSet, list[dict]]:
    """Three references, the first seed being the owner's own training seed (which the plan must skip)."""
    new: list[dict] = []
    refs = build_references(owner, tmp_path_factory.mktemp("refs") / "set", count=3, seed=OWNER_SEED, images=IMAGES,
                            max_epochs=2, progress=False, on_model=new.append)
    return refs, new


def test_build_references_trains_three_recipes_on_two_architectures(owner, built):
    refs, new = built
    entries = ReferenceSet.load(refs.folder).entries
    assert len(entries) == 3 and [e["name"] for e in new] == [e["name"] for e in entries]
    assert {e["recipe"] for e in entries} == {"simclr", "supervised", "autoencoder"}
    owner_card = read_card(owner)
    assert {e["arch"] for e in entries} == {owner_card.arch, "mlp"}
    seeds = [e["seed"] for e in entries]
    assert OWNER_SEED not in seeds and len(set(seeds)) == 3  # never the owner's initial weights
    assert all(e["images"] == IMAGES and e["data"] == "digits:query" and e["kind"] == "checkpoint" for e in entries)
    assert [e["epochs"] for e in entries if e["recipe"] == "simclr"] == [1]  # the owner's own epochs, under the cap
    for entry in entries:
        ckpt = load_checkpoint(refs.folder / entry["path"])
        assert ckpt.card.embed_dim == owner_card.embed_dim and ckpt.card.input_shape == owner_card.input_shape
        assert ckpt.card.data["split"] == "query" and ckpt.card.training["seed"] == entry["seed"]
        assert not (refs.folder / entry["path"] / "resume.safetensors").exists()
    assert refs.manifest["owner_weights_sha256"] == owner_card.weights_sha256
    assert refs.check_owner(owner_card) == []
    assert "built for another owner" in refs.check_owner(replace(owner_card, weights_sha256="0" * 64))[0]


def test_the_set_is_registered_with_the_owner_and_usable(owner, built):
    refs, _ = built
    assert owner_reference_dir(owner) == refs.folder.resolve()
    pointer = json.loads((owner / MANIFEST_FILE).read_text())
    assert pointer["format"] == "encoderguard-references-pointer"
    usable = ReferenceSet.load(owner_reference_dir(owner)).references()
    assert [r.name for r in usable] == refs.names()
    images = torch.rand(5, 1, 8, 8)
    for ref in usable:
        assert isinstance(ref.api, LocalAPI) and ref.api.dim == 16
        assert ref.api.embed(images).shape == (5, 16) and ref.info["recipe"] in ("simclr", "supervised", "autoencoder")


def test_rerun_trains_nothing_new_and_more_adds_only_the_missing(owner, built):
    refs, _ = built
    stamps = {e["name"]: (refs.folder / e["path"] / "model.safetensors").stat().st_mtime_ns for e in refs.entries}
    new: list[dict] = []
    again = build_references(owner, refs.folder, count=3, seed=OWNER_SEED, images=IMAGES, max_epochs=2,
                             progress=False, on_model=new.append)
    assert new == [] and again.entries == refs.entries
    assert stamps == {e["name"]: (refs.folder / e["path"] / "model.safetensors").stat().st_mtime_ns
                      for e in again.entries}
    more = build_references(owner, refs.folder, count=4, seed=OWNER_SEED, images=IMAGES, max_epochs=2,
                            progress=False, on_model=new.append)
    assert [e["name"] for e in new] == [more.entries[3]["name"]] and len(more.entries) == 4
    assert (more.entries[3]["recipe"], more.entries[3]["arch"]) == (PLAN[3][0], read_card(owner).arch)
    assert more.entries[:3] == refs.entries


def test_an_unlisted_model_in_the_folder_is_refused(owner, tmp_path):
    folder = tmp_path / "set"
    refs = build_references(owner, folder, count=1, seed=7, images=IMAGES, max_epochs=1, progress=False,
                            register=False)
    assert not (tmp_path / MANIFEST_FILE).exists()
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["references"] = []  # the model stays on disk, the manifest forgets it
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="the manifest does not list"):
        build_references(owner, folder, count=1, seed=7, images=IMAGES, max_epochs=1, progress=False,
                         register=False)
    assert refs.names() == ["ref00-simclr-convnet"]


def test_the_set_cannot_live_in_the_owner_folder(tmp_path):
    owner = save_owner(tmp_path / "owner", steps=0)
    try:
        build_references(owner, owner, count=1, images=IMAGES, max_epochs=1, progress=False)
    except (ValueError, DataError) as exc:  # refusing is fine
        assert "owner" in str(exc)
    else:  # so is building a set that stays loadable
        assert len(ReferenceSet.load(owner_reference_dir(owner)).entries) == 1


def test_owner_without_data_cannot_get_references(tmp_path):
    encoder = tiny_encoder(0)
    save_checkpoint(tmp_path / "o", encoder=encoder, card=ModelCard(arch="convnet", arch_kwargs={},
                                                                     input_shape=(1, 8, 8), embed_dim=16))
    with pytest.raises(DataError, match="records no data split"):
        build_references(tmp_path / "o", tmp_path / "set", count=1, progress=False)


def test_plan_is_a_pure_function_that_skips_the_owner_seed(owner):
    card = read_card(owner)
    card = replace(card, training={**card.training, "seed": 5})
    plans = plan_references(card, count=8, seed=3, max_epochs=2)
    assert plans == plan_references(card, count=8, seed=3, max_epochs=2)
    assert [p.seed for p in plans] == [3, 4, 6, 7, 8, 9, 10, 11]
    assert [(p.recipe, p.arch) for p in plans[:6]] == [(r, card.arch if a == "owner" else a) for r, a in PLAN]
    for k in range(3, 9):  # every set of 3 or more holds the three recipes and two architectures
        assert len({p.recipe for p in plans[:k]}) == 3 and len({p.arch for p in plans[:k]}) == 2
    assert all(p.arch_kwargs["embed_dim"] == card.embed_dim for p in plans)
    assert len({p.name for p in plans}) == 8
    epochs = {p.recipe: p.epochs for p in plans}
    assert epochs == {"simclr": 1, "supervised": 20, "autoencoder": 20}
    capped = plan_references(replace(card, training={**card.training, "epochs": 500}), count=1, max_epochs=2)
    assert capped[0].epochs == 2


@pytest.mark.parametrize(("kwargs", "match"), [({"count": 0}, "count"), ({"count": True}, "count"),
                                               ({"count": 2, "max_epochs": 0}, "max_epochs"),
                                               ({"count": 2, "supervised_epochs": 1.5}, "supervised_epochs")])
def test_plan_bad_settings(owner, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_references(read_card(owner), **kwargs)


# --- registering third-party models ------------------------------------------------------------------------------
@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    encoder = tiny_encoder(3)
    save_checkpoint(tmp_path / "public", encoder=encoder, card=ModelCard(arch="convnet", arch_kwargs={},
                                                                          input_shape=(1, 8, 8), embed_dim=16))
    return tmp_path / "public"


def test_add_checkpoint_registers_and_loads(tmp_path, third_party):
    refs = ReferenceSet.create(tmp_path / "set")
    entry = refs.add_checkpoint("public-a", third_party, note="a public model")
    assert entry["kind"] == "checkpoint" and entry["recipe"] == "registered" and entry["note"] == "a public model"
    assert Path(entry["path"]).is_absolute() and entry["arch"] == "convnet" and entry["embed_dim"] == 16
    loaded = ReferenceSet.load(tmp_path / "set")
    assert loaded.entries == [entry]
    (ref,) = loaded.references()
    images = torch.rand(3, 1, 8, 8)
    assert torch.allclose(ref.api.embed(images), LocalAPI(load_checkpoint(third_party).encoder).embed(images))
    assert ReferenceSet.create(tmp_path / "set").entries == [entry]  # create opens an existing set
    with pytest.raises(ValueError, match="already in"):
        loaded.add_checkpoint("public-a", third_party)
    with pytest.raises(CheckpointError):
        loaded.add_checkpoint("missing", tmp_path / "nowhere")
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="reference name"):
            loaded.add_checkpoint(bad, third_party)
    assert loaded.names() == ["public-a"]  # nothing was added by the failures


def test_add_api_never_stores_the_key(tmp_path, monkeypatch):
    refs = ReferenceSet.create(tmp_path / "set")
    monkeypatch.delenv("EG_TEST_REF_KEY", raising=False)
    entry = refs.add_api("vendor", "https://embeddings.example/v1", key_env="EG_TEST_REF_KEY")
    assert entry == {"name": "vendor", "kind": "api", "url": "https://embeddings.example/v1",
                     "key_env": "EG_TEST_REF_KEY", "recipe": "registered"}
    with pytest.raises(DataError, match=r"needs its API key in \$EG_TEST_REF_KEY"):
        ReferenceSet.load(tmp_path / "set").references()
    monkeypatch.setenv("EG_TEST_REF_KEY", "s3cret-value")
    (ref,) = ReferenceSet.load(tmp_path / "set").references()
    assert isinstance(ref.api, HTTPEmbeddingAPI) and ref.api.url == "https://embeddings.example/v1"
    assert "s3cret-value" not in (tmp_path / "set" / MANIFEST_FILE).read_text()
    for url in ("ftp://x", "embeddings.example", None):
        with pytest.raises(ValueError, match="http:// or https://"):
            refs.add_api("other", url)
    with pytest.raises(ValueError, match="already in"):
        refs.add_api("vendor", "https://embeddings.example/v2")


# --- loading -----------------------------------------------------------------------------------------------------
def _manifest(tmp_path: Path, body) -> Path:
    folder = tmp_path / "set"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST_FILE).write_text(body if isinstance(body, str) else json.dumps(body))
    return folder


@pytest.mark.parametrize(("body", "match"), [
    ("{oops", "not readable JSON"),
    ({"references": []}, "not an encoderguard reference manifest"),
    ([], "not an encoderguard reference manifest"),
    ({"format": "encoderguard-references", "references": {}}, "malformed \"references\" list"),
    ({"format": "encoderguard-references", "references": [{"name": "a"}]}, "each entry needs a name and a kind"),
    ({"format": "encoderguard-references", "references": [{"name": "a", "kind": "zip"}]}, "malformed"),
    ({"format": "encoderguard-references", "references": [{"kind": "api"}]}, "malformed"),
])
def test_load_errors(tmp_path, body, match):
    with pytest.raises(DataError, match=match):
        ReferenceSet.load(_manifest(tmp_path, body))


def test_missing_set_file_in_the_way_and_bad_pointer(tmp_path):
    with pytest.raises(DataError, match="no reference set at .* build one with 'encoderguard references build"):
        ReferenceSet.load(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        ReferenceSet.create(tmp_path / "afile")
    owner = tmp_path / "owner"
    owner.mkdir()
    assert owner_reference_dir(owner) is None
    (owner / MANIFEST_FILE).write_text(json.dumps({"format": "something", "path": "x"}))
    with pytest.raises(DataError, match="not an encoderguard reference pointer"):
        owner_reference_dir(owner)
    (owner / MANIFEST_FILE).write_text("{")
    with pytest.raises(DataError, match="not readable JSON"):
        owner_reference_dir(owner)
    register_with_owner(owner, tmp_path / "set")
    assert owner_reference_dir(owner) == (tmp_path / "set").resolve() and os.path.isabs(owner_reference_dir(owner))


# --- CLI ---------------------------------------------------------------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    from encoderguard.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.startswith("{") else None), err


def test_cli_references_build_add_list(owner, third_party, tmp_path, capsys):
    folder = tmp_path / "cli-set"
    code, result, err = _cli(capsys, "references", "build", "--owner", str(owner), "--count", "1", "--out",
                             str(folder), "--images", "64", "--max-epochs", "1", "--seed", "11", "--no-register",
                             "--no-progress", "--json")
    assert code == 0, err
    assert result["count"] == 1 and result["references"][0]["seed"] == 11 and not result["registered_with_owner"]
    code, result, err = _cli(capsys, "references", "add", "--refs", str(folder), "--name", "public",
                             "--checkpoint", str(third_party), "--note", "hub model", "--json")
    assert code == 0, err
    assert result["count"] == 2 and result["added"]["note"] == "hub model"
    code, result, err = _cli(capsys, "references", "list", "--refs", str(folder), "--json")
    assert code == 0 and [e["name"] for e in result["references"]] == ["ref00-simclr-convnet", "public"]
    from encoderguard.cli.main import main

    code = main(["references", "list", "--refs", str(folder)])
    text = capsys.readouterr().out
    assert code == 0 and text.startswith(f"2 references in {folder}") and "public" in text
    for argv, message in (
        (["add", "--refs", str(folder), "--name", "x"], "give exactly one of --checkpoint DIR or --api URL"),
        (["add", "--refs", str(folder), "--name", "x", "--checkpoint", str(third_party), "--api", "https://a"],
         "give exactly one of"),
        (["add", "--refs", str(folder), "--name", "public", "--api", "https://a"], "already in"),
        (["list", "--refs", str(tmp_path / "nowhere")], "no reference set"),
    ):
        code, _, err = _cli(capsys, "references", *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
