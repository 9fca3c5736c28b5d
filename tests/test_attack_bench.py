"""bench/attack.py's method specs: `name[:key=value,...][@label]`, a key naming an UnlearnConfig field
sets it (with the field's type), any other is a hyper-parameter."""

from tests.benches import load_bench


def test_a_spec_splits_config_fields_from_hyper_parameters():
    parse_spec = load_bench("method_specs").parse_spec
    label, method, hyper, options = parse_spec(
        "duge-on-uce:broad_prompts=512,mine=1,mined_guidance=0.5,lr=0.002@hardened"
    )
    assert (label, method) == ("hardened", "duge-on-uce")
    assert hyper == {"mined_guidance": 0.5}
    assert options == {"broad_prompts": 512, "mine": True, "lr": 0.002}
    assert type(options["broad_prompts"]) is int and type(options["mine"]) is bool
    assert parse_spec("uce") == ("uce", "uce", {}, {})
    assert parse_spec("duge-on-uce:anchor=gradient")[3] == {"anchor": "gradient"}  # a string field stays a string
