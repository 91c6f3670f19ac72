"""The catalogue is the single source: docs/protocol.md must equal its generated text, and the version
documented there must equal the code's (jupyter's doc/code version drift is the failure this prevents)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from interactive3d.protocol import catalogue
from interactive3d.protocol.catalogue import Arg, Buffer, OpSpec, validate_request
from interactive3d.protocol.codec import PROTOCOL_VERSION
from interactive3d.protocol.errors import ERROR_CODES, InvalidArgs

ROOT = Path(__file__).resolve().parents[2]


def test_committed_doc_equals_generated():
    """Byte equality of docs/protocol.md with markdown(); regenerate with the command in its header."""
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert doc == catalogue.markdown()


def test_documented_version_is_code_version():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    m = re.search(r"Protocol version: \*\*(\d+)\*\*", doc)
    assert m is not None and int(m.group(1)) == PROTOCOL_VERSION == 2


def test_contract_names():
    """DESIGN.md's contract: these codes and ops exist; STATE_COLUMNS is the [N,14] frame order."""
    for code in ("bad_message", "unsupported_version", "unknown_op", "invalid_args", "too_large", "not_found", "busy", "unauthorized", "internal"):
        assert code in ERROR_CODES
    assert "ping" in catalogue.OPS
    assert catalogue.STATE_COLUMNS == ("x", "y", "z", "r", "g", "b", "opacity", "sx", "sy", "sz", "qw", "qx", "qy", "qz")


SPEC = OpSpec(
    "t.op",
    "test",
    args=(
        Arg("n", "int", required=True, min=1, max=10),
        Arg("x", "float", default=0.5),
        Arg("p", "list", items="float", length=3, default=None),
        Arg("mode", "str", choices=("a", "b"), default="a"),
    ),
    buffers=(Buffer("pts", ("float32",), (None, 3)), Buffer("mask", ("bool", "uint8"), None, optional=True)),
    session=True,
)


def test_validate_fills_defaults_and_converts():
    args = validate_request(SPEC, {"session": "s", "n": 3, "x": 2, "extra": 1}, [np.zeros((5, 3), np.float32)])
    assert args == {"session": "s", "n": 3, "x": 2.0, "p": None, "mode": "a", "extra": 1}
    assert isinstance(args["x"], float)


@pytest.mark.parametrize(
    "args, buffers, field",
    [
        ({"n": 3}, [np.zeros((1, 3), np.float32)], "session"),  # session implied by session=True
        ({"session": "s"}, [np.zeros((1, 3), np.float32)], "'n'"),  # missing required
        ({"session": "s", "n": 11}, [np.zeros((1, 3), np.float32)], "<= 10"),  # over max
        ({"session": "s", "n": True}, [np.zeros((1, 3), np.float32)], "must be int"),  # bool is not int
        ({"session": "s", "n": 1, "x": float("nan")}, [np.zeros((1, 3), np.float32)], "finite"),
        ({"session": "s", "n": 1, "p": [0, 1]}, [np.zeros((1, 3), np.float32)], "3 items"),
        ({"session": "s", "n": 1, "p": [0, 1, float("inf")]}, [np.zeros((1, 3), np.float32)], "finite"),
        ({"session": "s", "n": 1, "mode": "c"}, [np.zeros((1, 3), np.float32)], "one of"),
        ({"session": "s", "n": 1}, [], "expected 1..2 buffers"),
        ({"session": "s", "n": 1}, [np.zeros((1, 3), np.float64)], "dtype"),
        ({"session": "s", "n": 1}, [np.zeros((1, 4), np.float32)], "shape"),
        ({"session": "s", "n": 1}, [np.full((1, 3), np.nan, np.float32)], "finite"),
        ({"session": "s", "n": 1}, [np.zeros((1, 3), np.float32)] * 3, "expected 1..2 buffers"),
    ],
)
def test_validate_rejects_with_field_in_message(args, buffers, field):
    """Each bad input is invalid_args and the message names the offending field or rule."""
    with pytest.raises(InvalidArgs) as e:
        validate_request(SPEC, args, buffers)
    assert e.value.code == "invalid_args" and field in e.value.message


def test_every_op_is_well_formed():
    for name, spec in catalogue.OPS.items():
        assert spec.name == name and spec.summary
