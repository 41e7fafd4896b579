from __future__ import annotations

import pytest
import torch

from encoderguard.defences import (
    DEFENCES,
    UNDEFENDED,
    CoverageNoise,
    GaussianNoise,
    Rounding,
    TopK,
    apply_chain,
    check_settings,
    create_defence,
    parse_chain,
    parse_defences,
    parse_spec,
    prepare_chain,
    split_chain,
)


def test_parse_specs_in_order_with_typed_parameters() -> None:
    chain = parse_defences(["coverage:bits=6,beta=0.2", "noise:sigma=0.1,repeat=fresh", "topk:k=4",
                            "round:bits=3", "orthogonal"])
    assert [d.name for d in chain] == ["coverage", "noise", "topk", "round", "orthogonal"]
    assert isinstance(chain[0], CoverageNoise) and chain[0].bits == 6 and chain[0].beta == 0.2
    assert isinstance(chain[1], GaussianNoise) and chain[1].sigma == 0.1 and chain[1].repeat == "fresh"
    assert parse_spec(" noise : sigma = 2 ") == ("noise", {"sigma": 2.0})


def test_unknown_name_lists_every_defence_with_its_parameters() -> None:
    with pytest.raises(ValueError) as info:
        parse_defences(["nosie:sigma=1"])
    message = str(info.value)
    assert "'nosie'" in message
    for name, cls in DEFENCES.items():
        assert name in message
        for param in cls.PARAMS:
            assert param in message


@pytest.mark.parametrize(("spec", "fragment"), [
    ("noise:sgma=1", "no parameter 'sgma'.*sigma, scale, repeat, seed"),
    ("noise", "needs sigma="),
    ("topk:k=two", "k='two'.*must be an integer"),
    ("noise:sigma", "malformed parameter 'sigma'"),
    ("noise:sigma=1,sigma=2", "given twice"),
    ("round:decimals=1,bits=2", "exactly one of decimals= or bits="),
    ("", "empty defence spec"),
])
def test_bad_specs_name_the_problem(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_defences([spec])


def test_create_defence_rejects_unknown_parameters() -> None:
    with pytest.raises(ValueError, match="its parameters are: k"):
        create_defence("topk", k=2, j=3)


def test_chain_order_matters(answers: torch.Tensor, inputs: torch.Tensor) -> None:
    top_then_round = apply_chain([TopK(k=4), Rounding(bits=2)], answers, inputs=inputs, key="k")
    round_then_top = apply_chain([Rounding(bits=2), TopK(k=4)], answers, inputs=inputs, key="k")
    assert bool(((round_then_top != 0).sum(dim=1) <= 4).all())
    # rounding after truncation quantises against the kept coordinates' range, so the answers differ
    assert not torch.equal(top_then_round, round_then_top)
    assert torch.equal(apply_chain([], answers, inputs=inputs, key="k"), answers)


def test_prepare_chain_checks_dims_and_binds_stores() -> None:
    class Store:
        def get_state(self, key_id: str, name: str) -> bytes | None:
            return None

        def put_state(self, key_id: str, name: str, value: bytes) -> None:
            pass

    coverage, store = CoverageNoise(), Store()
    prepare_chain([TopK(k=4), coverage], dim=16, store=store)
    assert coverage.store is store
    with pytest.raises(ValueError, match="exceeds the embedding size 16"):
        prepare_chain([TopK(k=32)], dim=16)


def test_split_chain() -> None:
    assert split_chain("coverage:beta=0.3+orthogonal") == ["coverage:beta=0.3", "orthogonal"]
    assert split_chain("noise:sigma=1e+2") == ["noise:sigma=1e+2"]
    assert split_chain("none") == [] and parse_chain(UNDEFENDED) == []
    assert [d.name for d in parse_chain("coverage+orthogonal:seed=3")] == ["coverage", "orthogonal"]


def test_check_settings_names_the_setting() -> None:
    check_settings(["noise:sigma=0.1", "coverage+orthogonal"])
    with pytest.raises(ValueError, match="defence setting 'coverage\\+orthgonal': unknown defence 'orthgonal'"):
        check_settings(["coverage+orthgonal"])
    with pytest.raises(ValueError, match="topk k=99 exceeds the embedding size 16"):
        check_settings(["topk:k=99"], dim=16)


def test_chain_errors_list_the_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        parse_chain("orthogonal+rotate")
    assert all(name in str(info.value) for name in DEFENCES)
    with pytest.raises(ValueError, match="its parameters are: sigma, scale, repeat, seed"):
        check_settings(["round:bits=2+noise:sigm=1"])
