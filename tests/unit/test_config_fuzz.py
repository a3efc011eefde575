"""Property-based test of config validation (hypothesis): any malformed value at any key ends in
a one-paragraph ConfigError that names the key, exit code 2 from the CLI, no traceback, and
nothing written. Which values must be refused is decided by an oracle written from the
documented table (``must_refuse`` below), not by the code under test: refused <=> oracle, and
accepted values round-trip into the resolved config with their type."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattice_flows.cli import main
from lattice_flows.config import (
    ConfigError, FlowConfig, HMCConfig, OutputConfig, SampleConfig, TrainConfig, config_from_dict,
)

VALID = {
    "lattice": {"shape": [4, 4]},
    "action": {"m2": -4.0, "lam": 8.0},
    "seed": 1,
    "device": "cpu",
    "dtype": "float32",
    "compile": False,
    "hmc": {"n_chains": 2, "n_therm": 20, "n_traj": 4, "n_steps": 2, "step_size": "auto",
            "target_acceptance": 0.8, "save_every": 1, "integrator": "leapfrog", "jitter": 0.5,
            "fourier_acceleration": False, "fa_kernel": "free", "fa_mu2": "auto",
            "trajectory_length": None},
    "flow": {"n_layers": 2, "hidden_channels": [4], "kernel_size": 3, "equivariant": True,
             "activation": "silu", "fourier_layer": True, "zero_mode_widths": [0.25, 1.0],
             "cnf_kernel": "phat", "cnf_kernel_range": 16},
    "train": {"steps": 2, "batch_size": 4, "lr": 0.001, "objective": "reverse",
              "budget_clock": "device"},
    "sample": {"mode": "mcmc", "n_chains": 2, "n_samples": 4, "batch_size": 8, "cnf_steps": None,
               "flow_steps": 1, "hmc_trajectories": 1},
    "output": {"dir": "PLACEHOLDER", "chunk_rows": 10},
}

KEYS = [(sec, key) for sec, body in VALID.items() if isinstance(body, dict) for key in body] + [
    (k, None) for k, v in VALID.items() if not isinstance(v, dict)
]

bad_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10**6, max_value=0),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not math.isfinite(x) or x < 0),
    st.text(min_size=0, max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(KEYS + [("bogus_section", None), ("hmc", "bogus_key")]), value=bad_values)
def test_malformed_values_are_refused_with_the_key(tmp_path, target, value):
    raw = copy.deepcopy(VALID)
    out = tmp_path / "out"
    raw["output"]["dir"] = str(out)
    sec, key = target
    if key is None:
        raw[sec] = value
        name = sec
    else:
        raw[sec][key] = value
        name = key
    refuse = must_refuse(sec, key, value)
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        msg = str(exc)
        assert refuse, f"refused an allowed value {target} = {value!r}: {msg}"
        assert name in msg, (target, value, msg)
        assert "\n" not in msg.strip()
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["hmc", str(path), "--no-progress"]) == 2
        assert not out.exists()
        return
    # accepted: only values the documented table allows may get here, and they round-trip
    assert not refuse, f"accepted {target} = {value!r}, which the documented table refuses"
    assert_round_trip(raw, cfg)


def assert_round_trip(raw: dict, cfg) -> None:
    """Every value of an accepted ``raw`` is what the resolved config holds; sections given as
    null take every documented default."""
    resolved = cfg.to_dict()
    for s_name, body in raw.items():
        if isinstance(body, dict) and s_name in SECTION_DEFAULTS:
            want = {**SECTION_DEFAULTS[s_name], **{k: resolve(s_name, k, v) for k, v in body.items()}}
            assert same(resolved[s_name], want), (s_name, resolved[s_name], want)
        elif body is None:
            assert same(resolved[s_name], SECTION_DEFAULTS[s_name]), (s_name, resolved[s_name])
        elif s_name == "lattice":
            assert same(resolved["lattice"], {"shape": list(body["shape"])}), resolved["lattice"]
        elif s_name == "action":
            assert same([resolved["action"]["m2"], resolved["action"]["lam"]],
                        [resolve("action", "m2", body["m2"]), resolve("action", "lam", body["lam"])])
        else:
            assert same(resolved[s_name], resolve(s_name, None, body)), (s_name, resolved[s_name])


# ------------------------------------------------------------------ the oracle
# What must be refused, written from the documented table (README "Configuration" and the
# allowed values each key's error message names), independently of config.py's schema: a
# predicate per key over the raw YAML value. "number": an int or float (not a bool), finite, or
# a string that reads as a decimal number (YAML 1.1 leaves e.g. 3e-3 a string).

_NUMBER = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    """The value as a finite float, or None if it is not a number."""
    if isinstance(v, str):
        if not _NUMBER.fullmatch(v):
            return None
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _int_ok(cond):
    return lambda v: _is_int(v) and cond(v)


def _num_ok(cond):
    return lambda v: _number(v) is not None and cond(_number(v))


def _choice(*choices):
    return lambda v: isinstance(v, str) and v in choices


def _pos_int_list(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_int(n) and n > 0 for n in v)


def _pos_number_list(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(
        _number(x) is not None and _number(x) > 0 for x in v)


_is_bool = lambda v: isinstance(v, bool)  # noqa: E731
_pos = _int_ok(lambda n: n > 0)

ALLOWED = {
    # VALID has a flow section: checkerboard couplings need every extent even
    ("lattice", "shape"): lambda v: _pos_int_list(v) and all(n % 2 == 0 for n in v),
    ("action", "m2"): _num_ok(lambda x: True),  # lam = 8 > 0 in VALID: any finite m2
    ("action", "lam"): _num_ok(lambda x: x > 0),  # lam >= 0, and lam = 0 needs m2 > 0 (m2 = -4)
    ("seed", None): _int_ok(lambda n: n >= 0),
    ("device", None): _choice("auto", "cpu", "cuda"),
    ("dtype", None): _choice("float32", "float64"),
    ("compile", None): _is_bool,
    ("hmc", "n_chains"): _pos,
    ("hmc", "n_therm"): _int_ok(lambda n: n >= 0),
    ("hmc", "n_traj"): _pos,
    ("hmc", "n_steps"): _pos,
    ("hmc", "step_size"): lambda v: v == "auto" or _num_ok(lambda x: x > 0)(v),
    ("hmc", "target_acceptance"): _num_ok(lambda x: 0 < x < 1),
    ("hmc", "save_every"): _pos,
    ("sample", "cnf_steps"): lambda v: v is None or _pos(v),
    ("hmc", "integrator"): _choice("leapfrog", "omelyan"),
    ("hmc", "jitter"): _num_ok(lambda x: 0 <= x < 1),
    ("hmc", "fourier_acceleration"): _is_bool,
    ("hmc", "fa_kernel"): _choice("free", "measured"),
    ("hmc", "fa_mu2"): lambda v: v == "auto" or _num_ok(lambda x: x > 0)(v),
    ("hmc", "trajectory_length"): lambda v: v is None or v == "auto" or _num_ok(lambda x: x > 0)(v),
    ("flow", "n_layers"): _int_ok(lambda n: n > 0 and n % 2 == 0),
    ("flow", "hidden_channels"): _pos_int_list,
    ("flow", "kernel_size"): _int_ok(lambda n: n > 0 and n % 2 == 1),
    ("flow", "equivariant"): _is_bool,
    # the conditioner is 'symmetrized' (default), which takes any activation
    ("flow", "activation"): _choice("tanh", "leaky_relu", "gelu", "silu", "relu", "softsign"),
    ("flow", "fourier_layer"): _is_bool,
    ("flow", "zero_mode_widths"): _pos_number_list,
    ("flow", "cnf_kernel"): _choice("phat", "orbit", "phat+orbit"),
    ("flow", "cnf_kernel_range"): _pos,
    ("train", "steps"): _pos,
    ("train", "batch_size"): _pos,
    ("train", "lr"): _num_ok(lambda x: x > 0),
    # forward and mixed need train.data, which VALID does not give
    ("train", "objective"): _choice("reverse", "path_gradient", "path_gradient_fast"),
    ("train", "budget_clock"): _choice("device", "cpu", "wall"),
    ("sample", "n_chains"): _pos,
    ("sample", "n_samples"): _pos,
    ("sample", "batch_size"): _pos,
    # VALID has an hmc section, which mode 'composite' needs
    ("sample", "mode"): _choice("mcmc", "importance", "composite"),
    ("sample", "flow_steps"): _pos,
    ("sample", "hmc_trajectories"): _pos,
    ("output", "dir"): lambda v: isinstance(v, str) and v != "",
    ("output", "chunk_rows"): _pos,
}
# optional sections: null or {} means every default; lattice and action are required
OPTIONAL_SECTIONS = ("hmc", "flow", "train", "sample", "output")


def must_refuse(sec: str, key: str | None, value) -> bool:
    """True iff VALID with ``raw[sec][key] = value`` (``raw[sec] = value`` for key None) is not
    an allowed configuration."""
    if key is not None:
        if (sec, key) not in ALLOWED:  # an unknown key
            return True
        return not ALLOWED[(sec, key)](value)
    if (sec, None) in ALLOWED:  # a top-level scalar
        return not ALLOWED[(sec, None)](value)
    if sec not in OPTIONAL_SECTIONS:  # lattice, action (whole section replaced) or unknown
        return True
    if value is None:
        return False
    if not isinstance(value, dict):
        return True
    return any((sec, k) not in ALLOWED or not ALLOWED[(sec, k)](v) for k, v in value.items())


NUMBER_KEYS = {("action", "m2"), ("action", "lam"), ("hmc", "step_size"),
               ("hmc", "target_acceptance"), ("hmc", "jitter"), ("train", "lr"),
               ("hmc", "fa_mu2"), ("hmc", "trajectory_length")}


def resolve(sec: str, key: str | None, v):
    """The value an accepted raw value resolves to: numbers (also written as strings or ints)
    as floats, anything else as given."""
    if (sec, key) == ("flow", "zero_mode_widths"):
        return [float(x) for x in v]
    return float(v) if (sec, key) in NUMBER_KEYS and v not in ("auto", None) else v


def same(a, b) -> bool:
    """Equal with equal types, element by element (True == 1 and 1 == 1.0 are not enough)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


SECTION_DEFAULTS = {
    "hmc": asdict(HMCConfig()),
    "flow": {**asdict(FlowConfig()), "hidden_channels": list(FlowConfig().hidden_channels),
             "zero_mode_widths": list(FlowConfig().zero_mode_widths)},
    "train": asdict(TrainConfig()),
    "sample": asdict(SampleConfig()),
    "output": asdict(OutputConfig()),
}


# Boundary values around every documented limit, allowed and not: each is set at every key.
BOUNDARY = [
    None, True, False, 0, 1, 2, 3, 4, 7, -1, 0.0, 0.5, 0.999, 1.0, 1.5, -0.5, 1e-300,
    "auto", "cpu", "cuda", "float32", "float64", "leapfrog", "omelyan", "tanh", "leaky_relu",
    "gelu", "silu", "relu", "softsign", "reverse", "path_gradient", "path_gradient_fast",
    "forward", "mixed", "symmetrized", "odd", "mcmc", "importance", "composite", "affine",
    "free", "measured", "device", "wall", "runs/x", "", "3e-3", "1e-1",
    "0.5", "2", "-2", "+.5e1", "1.", "nan", "inf", "1_0", " 1", "0x10", "\u0661",
    [], [2], [4, 4], [3, 4], [0, 4], [2, 2, 2], [4, True], [1.0], {}, {"n_chains": 3},
    {"bogus": 1}, {"steps": 0}, {"dir": "runs/y", "chunk_rows": 5},
]


def _with(target, value) -> dict:
    raw = copy.deepcopy(VALID)
    raw["output"]["dir"] = "/nonexistent/never/written"
    sec, key = target
    if key is None:
        raw[sec] = value
    else:
        raw[sec][key] = value
    return raw


def test_every_key_accepts_exactly_what_the_documented_table_allows():
    """All BOUNDARY values at all keys: accepted iff the oracle allows it, and accepted values
    round-trip (exhaustive, so the accepted branch is exercised as much as the refusals)."""
    wrong, n_accepted = [], 0
    for target in KEYS + [("bogus_section", None), ("hmc", "bogus_key")]:
        for value in BOUNDARY:
            raw = _with(target, value)
            refuse = must_refuse(*target, value)
            try:
                cfg = config_from_dict(raw)
            except ConfigError:
                if not refuse:
                    wrong.append(("refused", target, value))
                continue
            if refuse:
                wrong.append(("accepted", target, value))
                continue
            n_accepted += 1
            assert_round_trip(raw, cfg)
    assert not wrong, wrong
    assert n_accepted > 100, n_accepted  # the accepted branch is exercised


@settings(max_examples=40, deadline=None, derandomize=True)
@given(section=st.sampled_from(["lattice", "action", "hmc", "flow", "train", "sample", "output"]))
def test_missing_or_non_mapping_sections(section):
    raw = copy.deepcopy(VALID)
    raw["output"]["dir"] = "/nonexistent/never/written"
    raw[section] = ["not", "a", "mapping"]
    try:
        config_from_dict(raw)
        raise AssertionError("accepted a list as a section")
    except ConfigError as exc:
        assert section in str(exc)
    if section in ("lattice", "action"):
        del raw[section]
        try:
            config_from_dict(raw)
            raise AssertionError("accepted a config without a required section")
        except ConfigError as exc:
            assert section in str(exc)


VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(VALID_TEXT)), junk=st.text(max_size=6), drop=st.integers(0, 12))
def test_malformed_yaml_text_is_refused_without_traceback(tmp_path, capsys, cut, junk, drop):
    """Broken YAML files (cut short, junk inserted, characters dropped): either still a valid
    config, or exit 2 with a message naming the file or a key, no traceback, nothing written."""
    from lattice_flows.config import load_config

    out = tmp_path / "out"
    text = VALID_TEXT.replace("PLACEHOLDER", str(out))
    cut = min(cut, len(text))
    text = text[:cut] + junk + text[cut + drop:]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
        return  # still valid: nothing to refuse
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg or "config key" in msg or "section" in msg, msg
    capsys.readouterr()
    assert main(["hmc", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err
    assert not out.exists()


def test_odd_extents_are_refused_where_checkerboards_need_them(tmp_path, capsys):
    raw = copy.deepcopy(VALID)
    raw["output"]["dir"] = str(tmp_path / "out")
    raw["lattice"]["shape"] = [5, 4]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lattice.shape" in err and "even" in err and not (tmp_path / "out").exists()
    del raw["flow"], raw["train"], raw["sample"]  # HMC alone runs on odd extents
    config_from_dict(raw)
