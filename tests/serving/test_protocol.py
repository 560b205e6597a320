"""The Open Inference Protocol as data: requests parsed and checked, responses built, called directly.

No socket, no event loop, no subprocess: each bad request gets the typed HTTPError (status and message)
that tests/serving/test_serve.py sees over HTTP.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from seqship.runtime import Predictor
from seqship.runtime.errors import InputError
from seqship.runtime.serve.protocol import (
    DEFAULT_OUTPUTS,
    HTTPError,
    Limits,
    Served,
    find_model,
    infer_response,
    parse_infer,
    parse_predict,
    predict_response,
)

LABELS = 3  # the number of labels parse_infer checks top_k and classification against
LIMITS = Limits(max_texts=64)


def tensor(texts, shape=None, **extra) -> dict:
    return {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(texts)] if shape is None else shape,
        "data": texts,
        **extra,
    }


def body(texts=("Nguyen",), **fields) -> bytes:
    return json.dumps({"inputs": [tensor(list(texts))], **fields}).encode()


def binary(texts: list[bytes], size=None, shape=None) -> tuple[bytes, str]:
    """A binary-tensor request: (body, its Inference-Header-Content-Length)."""
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    t = tensor(
        [],
        [len(texts) if shape is None else shape],
        parameters={"binary_data_size": len(blob) if size is None else size},
    )
    del t["data"]
    head = json.dumps({"inputs": [t]}).encode()
    return head + blob, str(len(head))


def refused(raw: bytes, header_length: str | None = None, num_labels: int = LABELS) -> HTTPError:
    with pytest.raises(HTTPError) as e:
        parse_infer(raw, header_length, num_labels, LIMITS)
    return e.value


# ---------------------------------------------------------------------------------------- valid requests


def test_a_bytes_tensor_of_texts_is_read_with_the_protocols_defaults():
    req = parse_infer(body(["Nguyen", "Schmidt", "Rossi"]), None, LABELS, LIMITS)
    assert req.texts == ["Nguyen", "Schmidt", "Rossi"]
    assert req.id is None and req.top_k == 1 and req.errors == "raise" and req.scoring_k == 1
    assert req.outputs == [(name, False, 0) for name in DEFAULT_OUTPUTS]


def test_shape_n_by_1_data_is_flattened_in_row_major_order():
    raw = json.dumps({"inputs": [tensor([["Nguyen"], ["Schmidt"]], shape=[2, 1])]}).encode()
    assert parse_infer(raw, None, LABELS, LIMITS).texts == ["Nguyen", "Schmidt"]


def test_parameters_id_and_errors_return_add_the_error_output():
    raw = body(["Nguyen"], id="r-1", parameters={"top_k": 3, "errors": "return", "binary_data_output": True})
    req = parse_infer(raw, None, LABELS, LIMITS)
    assert req.id == "r-1" and req.top_k == 3 and req.errors == "return" and req.scoring_k == 3
    assert req.outputs == [(name, True, 0) for name in (*DEFAULT_OUTPUTS, "error")]


def test_the_classification_parameter_widens_scoring_not_top_k():
    outputs = [
        {"name": "top_k_labels"},
        {"name": "score", "parameters": {"classification": 2, "binary_data": True}},
    ]
    req = parse_infer(body(outputs=outputs), None, LABELS, LIMITS)
    assert req.outputs == [("top_k_labels", False, 0), ("score", True, 2)]
    assert req.top_k == 1 and req.scoring_k == 2


def test_an_item_that_cannot_be_a_text_is_an_input_error_at_its_index_not_a_refusal():
    req = parse_infer(body(["a", 7, None]), None, LABELS, LIMITS)
    assert req.texts[0] == "a"
    assert isinstance(req.texts[1], InputError) and req.texts[1].index == 1
    assert str(req.texts[1]).startswith("text #1 is a number (7), not a string")
    assert isinstance(req.texts[2], InputError) and str(req.texts[2]).startswith("text #2 is null")


def test_binary_tensors_are_read_after_the_json_header_and_bad_utf8_names_its_element():
    raw, header_length = binary([b"Nguyen", "Müller".encode(), b"\xffbad"])
    req = parse_infer(raw, header_length, LABELS, LIMITS)
    assert req.texts[:2] == ["Nguyen", "Müller"]
    assert isinstance(req.texts[2], InputError) and req.texts[2].index == 2
    assert str(req.texts[2]).startswith("text #2: not UTF-8")


# ---------------------------------------------------------------------------------------- bad requests

OK = body()
BAD = [  # (body, Inference-Header-Content-Length, status, the message, or the part of it test_serve.py expects)
    (b"{not json", None, 400, "the request body is not valid JSON"),
    (b"[1, 2]", None, 400, "the request must be a JSON object with an 'inputs' list"),
    (b'{"inputs": "Nguyen"}', None, 400, "'inputs' must be a list holding one tensor"),
    (b'{"inputs": []}', None, 400, "'inputs' must be a list holding one tensor"),
    (b"\xff\xfe{}", None, 400, "the request body is not UTF-8"),
    (b"[" * 1100, None, 400, "the request body nests too deeply to be read"),
    (b"[" * 60_000, None, 413, "the request body holds more than 1152 JSON values"),
    (OK.replace(b'"BYTES"', b'"FP32"'), None, 400, "inputs[0] 'text': datatype 'FP32'; texts are sent as BYTES"),
    (OK.replace(b"[1]", b"[1, 3]"), None, 400, "inputs[0] 'text': shape [1, 3]; send [N] (or [N, 1])"),
    (OK.replace(b"[1]", b"[-1]"), None, 400, "inputs[0] 'text': shape [-1]"),
    (OK.replace(b"[1]", b"[2]"), None, 400, "inputs[0] 'text': shape says 2 texts, 'data' holds 1"),
    (OK.replace(b'"text"', b'"txt"'), None, 400, "inputs[0]: unknown input 'txt'; the model has one input, 'text'"),
    (
        OK.replace(b"[1]", b"[1, 1]").replace(b'["Nguyen"]', b'[[["Nguyen"]]]'),
        None,
        400,
        "'data' nests deeper than the tensor's shape",
    ),
    (body(parameters={"top_k": 99}), None, 400, "parameters.top_k must be an integer from 1 to 3, got 99"),
    (body(parameters={"top_k": 4}), None, 400, "parameters.top_k must be an integer from 1 to 3, got 4"),
    (body(parameters={"top_k": 0}), None, 400, "parameters.top_k must be an integer from 1 to 3, got 0"),
    (body(parameters={"top_k": True}), None, 400, "parameters.top_k must be an integer from 1 to 3, got True"),
    (body(parameters={"errors": "skip"}), None, 400, "parameters.errors must be 'raise'"),
    (body(parameters=[]), None, 400, "'parameters' must be an object"),
    (body(id=7), None, 400, "'id' must be a string, got int"),
    (body([]), None, 400, "inputs[0] 'text': no texts (shape [0]); send at least one"),
    (body(["a"] * 65), None, 413, "65 texts in one request; the limit is 64 (--max-texts)"),
    (body(outputs=[{"name": "logits"}]), None, 400, "outputs[0]: unknown output 'logits'; the outputs are label,"),
    (body(outputs=[{"name": ["label"]}]), None, 400, "outputs[0]: unknown output"),
    (body(outputs=[{"name": "label"}, {"name": "label"}]), None, 400, "outputs[1]: 'label' is asked for twice"),
    (body(outputs=[]), None, 400, "'outputs' must be a non-empty list"),
    (
        body(outputs=[{"name": "score", "parameters": {"classification": 4}}]),
        None,
        400,
        "outputs[0] 'score': classification must be 0 to 3, got 4",
    ),
    (*binary([b"Nguyen"], size=3), 400, "inputs[0] 'text': binary_data_size 3, but 10 bytes follow the JSON header"),
    (*binary([b"a", b"b", b"c"], shape=1), 400, "shape says 1 elements, the binary data holds more than 1"),
    (*binary([b"a", b"b"], shape=3), 400, "shape says 3 elements, the binary data holds 2"),
    (binary([b"Nguyen"])[0][:-2], binary([b"Nguyen"])[1], 400, "binary_data_size 10, but 8 bytes follow"),
    (binary([b"Nguyen"])[0], str(10**9), 400, "Inference-Header-Content-Length '1000000000' is not a length within"),
    (binary([b"Nguyen"])[0], "ten", 400, "Inference-Header-Content-Length 'ten' is not a length within"),
    (OK + b"xx", str(len(OK)), 400, "2 bytes follow the JSON header, but no input declares binary_data_size"),
]


@pytest.mark.parametrize("raw, header_length, status, message", BAD, ids=[f"{c[2]}-{c[3][:40]}" for c in BAD])
def test_a_bad_infer_request_is_an_http_error_with_its_status_and_message(raw, header_length, status, message):
    e = refused(raw, header_length)
    assert (e.status, e.headers) == (status, {})
    assert message in e.message and e.message == str(e)


def test_the_json_header_of_a_binary_request_is_named_as_such():
    e = refused(b"{oops" + struct.pack("<I", 1) + b"a", "5")
    assert e.status == 400 and e.message.startswith("the request's JSON header is not valid JSON")


# ---------------------------------------------------------------------------------------- models, /predict, answers


@pytest.fixture(scope="module")
def served(tiny_run) -> Served:
    return Served("names", Path(tiny_run[1]["bundle"]), Predictor.load(tiny_run[1]["bundle"], providers="cpu"))


def test_a_model_is_found_by_name_and_version_and_otherwise_is_a_404(served):
    models = {"names": served}
    assert find_model(models, "names", None) is served and find_model(models, "names", "1") is served
    with pytest.raises(HTTPError) as e:
        find_model(models, "nope", None)
    assert e.value.status == 404 and e.value.message == "unknown model 'nope'; this server has names"
    with pytest.raises(HTTPError) as e:
        find_model(models, "names", "2")
    assert e.value.status == 404 and "model 'names' has no version '2'" in e.value.message


def test_predict_requests_name_their_model_and_are_checked(served):
    n = len(served.predictor.labels)
    req = parse_predict(b'{"texts": ["Nguyen", 3], "top_k": 2}', {"names": served}, LIMITS)
    assert req.model == "names" and req.top_k == 2 and req.texts[0] == "Nguyen"
    assert isinstance(req.texts[1], InputError) and str(req.texts[1]).startswith("text #1 is a number")
    cases = [
        ({"names": served}, b'{"texts": "Nguyen"}', 400, 'send {"texts": ["...", ...]}'),
        ({"names": served}, b'{"texts": ["a"], "model": "nope"}', 404, "unknown model 'nope'; this server has names"),
        (
            {"a": served, "b": served},
            b'{"texts": ["x"]}',
            400,
            'this server has 2 models: name one with "model" (a, b)',
        ),
        ({"names": served}, b'{"texts": ["a"], "top_k": 0}', 400, f"top_k must be an integer from 1 to {n}, got 0"),
        ({"names": served}, b'{"texts": []}', 400, '"texts" is empty'),
        ({"names": served}, json.dumps({"texts": ["a"] * 65}).encode(), 413, "the limit is 64 (--max-texts)"),
    ]
    for models, raw, status, message in cases:
        with pytest.raises(HTTPError) as e:
            parse_predict(raw, models, LIMITS)
        assert e.value.status == status and message in e.value.message, (raw, e.value.message)


def test_an_infer_answer_holds_each_output_as_the_local_predictor_computes_it(served, data_dir):
    lines = (data_dir / "names" / "Vietnamese.txt").read_text(encoding="utf-8").splitlines()
    texts = [n.strip() for n in lines if n.strip()][:4]
    want = served.predictor.predict(texts, top_k=2)
    results = [*want[:3], InputError("text #3 is empty", 3)]
    outputs = [{"name": n} for n in ("label", "top_k_labels", "error")]
    outputs.append({"name": "score", "parameters": {"classification": 2}})
    raw = body(texts, id="r-9", outputs=outputs, parameters={"top_k": 2})
    req = parse_infer(raw, None, len(served.predictor.labels), LIMITS)
    content, headers = infer_response(served, req, results)
    assert headers == {}
    got = json.loads(content)
    assert got["model_name"] == "names" and got["model_version"] == "1" and got["id"] == "r-9"
    assert got["parameters"] == {"bundle_sha256": served.predictor.digest}
    out = {o["name"]: o for o in got["outputs"]}
    assert out["label"] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [4],
        "data": [p.label for p in want[:3]] + [""],
    }
    assert out["top_k_labels"]["shape"] == [4, 2]
    assert out["top_k_labels"]["data"] == [lab for p in want[:3] for lab, _ in p.top_k] + ["", ""]
    assert out["error"]["data"] == ["", "", "", "text #3 is empty"]
    index = served.label_index
    assert out["score"]["shape"] == [4, 2] and out["score"]["data"] == [
        f"{s:f}:{index[lab]}:{lab}" for p in want[:3] for lab, s in p.top_k
    ] + ["", ""]


def test_binary_outputs_follow_the_json_header_whose_length_is_in_a_header(served):
    want = served.predictor.predict(["Nguyen", "Schmidt"])
    req = parse_infer(body(["Nguyen", "Schmidt"], parameters={"binary_data_output": True}), None, LABELS, LIMITS)
    content, headers = infer_response(served, req, want)
    n = int(headers["Inference-Header-Content-Length"])
    head, blob = json.loads(content[:n]), content[n:]
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in head["outputs"]}
    assert list(sizes) == list(DEFAULT_OUTPUTS) and sum(sizes.values()) == len(blob)
    at = {}
    pos = 0
    for name, size in sizes.items():
        at[name] = blob[pos : pos + size]
        pos += size
    np.testing.assert_array_equal(np.frombuffer(at["score"], "<f4"), np.array([p.score for p in want], np.float32))
    np.testing.assert_array_equal(np.frombuffer(at["num_tokens"], "<i8"), [p.num_tokens for p in want])
    labels, pos = [], 0
    while pos < len(at["label"]):
        (k,) = struct.unpack_from("<I", at["label"], pos)
        labels.append(at["label"][pos + 4 : pos + 4 + k].decode())
        pos += 4 + k
    assert labels == [p.label for p in want]


def test_a_predict_answer_is_one_line_per_text_by_index(served):
    want = served.predictor.predict(["Nguyen"], top_k=2)
    got = json.loads(predict_response(served, [*want, InputError("text #1 is null", 1)]))
    assert got["model"] == "names" and got["bundle_sha256"] == served.predictor.digest
    assert got["predictions"] == [
        {"index": 0, **json.loads(json.dumps(want[0].to_dict()))},
        {"index": 1, "error": "text #1 is null"},
    ]


# ---------------------------------------------------------------------------------------- bounded work and memory

BIG = Limits()  # the defaults: 1024 texts, so 2 * 1024 + 1024 = 3072 JSON values
BOMBS = {  # 8 MiB of tiny values: each took json.loads from 0.1 s (empty strings) to 2.9 s (nested lists) to build
    "lists": b"[],",
    "nested lists": b"[[]],",
    "objects": b"{},",
    "zeros": b"0,",
    "nulls": b"null,",
    "empty strings": b'"",',
    "strings of an escape": b'"\\\\",',
    "keys": b'{"a":1},',
}


@pytest.mark.parametrize("unit", BOMBS.values(), ids=BOMBS)
def test_a_body_of_millions_of_tiny_json_values_is_refused_before_one_is_built(unit):
    from seqship.runtime.serve.protocol import check_json_values

    data = (unit * ((8 << 20) // len(unit)))[:-1]
    for raw in (body()[:-3] + b"," + data + b"]}]}", b'{"texts": [' + data + b"]}"):
        with pytest.raises(HTTPError) as e:
            check_json_values(raw, BIG, "the request body")
        assert e.value.status == 413 and "more than 3072 JSON values" in e.value.message
        assert "--max-texts" in e.value.message
        with pytest.raises(HTTPError, match="more than 3072 JSON values"):
            parse_infer(raw, None, LABELS, BIG)


TRICKY = [  # texts whose commas, brackets, quotes and backslashes are inside strings: never counted as values
    "a," * 400,
    "[{" * 300,
    'say "hi", then [go]' * 20,
    "ends in a backslash \\",
    "\\",
    '\\"',
    "\\\\\\,[",
    "Müller, José",
    "\u2028,\u2029",
]


def test_texts_full_of_commas_brackets_and_escapes_are_read_whole_up_to_max_texts(served):
    texts = [TRICKY[i % len(TRICKY)] for i in range(BIG.max_texts)]
    outputs = [{"name": n, "parameters": {"binary_data": False}} for n in DEFAULT_OUTPUTS]
    params = {"top_k": 2, "errors": "return", "trace": {"spans": list(range(200))}}
    for raw in (
        body(texts, outputs=outputs, parameters=params),
        json.dumps({"inputs": [tensor([[t] for t in texts], [len(texts), 1])]}).encode(),  # [N, 1]: 2 values a text
        json.dumps({"inputs": [tensor(texts)]}, ensure_ascii=False).encode(),
        json.dumps({"inputs": [tensor(texts)]}, indent=2).encode(),
    ):
        assert parse_infer(raw, None, LABELS, BIG).texts == texts
    assert parse_predict(json.dumps({"texts": texts}).encode(), {"names": served}, BIG).texts == texts


def test_the_count_stops_at_the_limit_whatever_the_json_around_it():
    from seqship.runtime.serve.protocol import check_json_values

    limits = Limits(max_texts=1)  # 2 + 1024 = 1026 values
    check_json_values(b"[" + b"0," * 1024 + b"0]", limits, "x")  # 1 + 1025 values: at the limit
    for raw in (b"[" + b"0," * 1025 + b"0]", b'"' * 2100, b"[" + b'"\\"",' * 1100 + b"0]"):
        with pytest.raises(HTTPError, match="more than 1026 JSON values"):
            check_json_values(raw, limits, "x")
    for raw in (b'["\\', b'"', b'["' + b"\\" * 999, b'"\\"' * 3):  # unfinished strings: left to json.loads (400)
        check_json_values(raw, limits, "x")
        with pytest.raises(HTTPError, match="not valid JSON"):
            parse_infer(raw, None, LABELS, limits)


def test_inflating_takes_from_the_budget_and_a_spent_budget_is_a_503_and_every_byte_is_returned():
    import gzip
    import zlib

    from seqship.runtime.serve.bodies import Budget, inflate

    budget = Budget(3 << 20)
    big = gzip.compress(b" " * (2 << 20))
    with budget.hold() as a:
        assert inflate(big, "gzip", 4 << 20, a) == b" " * (2 << 20) and budget.held == 2 << 20
        with budget.hold() as b, pytest.raises(HTTPError) as e:
            inflate(big, "gzip", 4 << 20, b)
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
        assert "the limit is 3145728 (--max-buffered-bytes)" in e.value.message
        assert budget.held == 2 << 20  # b's share came back when it ended
    assert budget.held == 0
    with budget.hold() as c:  # members, deflate, and what was refused before
        assert inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10, c) == b"abcd"
        assert inflate(zlib.compress(b"x" * 5000), "deflate", 5000, c) == b"x" * 5000
        with pytest.raises(HTTPError, match="inflates past 4999"):
            inflate(zlib.compress(b"x" * 5000), "deflate", 4999, c)
        with pytest.raises(HTTPError, match="truncated"):
            inflate(gzip.compress(b"x" * 5000)[:-9], "gzip", 10**6, c)
        assert inflate(gzip.compress(b"", mtime=0) * 16, "gzip", 10, c) == b""
        with pytest.raises(HTTPError, match="more than 16 members"):
            inflate(gzip.compress(b"", mtime=0) * 17, "gzip", 10, c)
    assert budget.held == 0


IMPOSSIBLE = [  # (limits, the options the error names)
    ({"max_delay_ms": 30_000, "timeout_s": 30}, ("--max-delay-ms 30000", "--timeout-s 30")),
    ({"max_delay_ms": 60_000}, ("--max-delay-ms 60000", "--timeout-s 30")),
    ({"max_delay_ms": 99, "timeout_s": 0.1}, ("--max-delay-ms 99", "--timeout-s 0.1")),  # no time left to score
    ({"max_delay_ms": 29_901, "timeout_s": 30}, ("--max-delay-ms 29901", "--timeout-s 30")),
    ({"max_texts": 2000, "max_queue_texts": 1999}, ("--max-texts 2000", "--max-queue-texts 1999")),
    ({"max_body_bytes": 1 << 20, "max_buffered_bytes": (2 << 20) - 1}, ("--max-buffered-bytes", "--max-body-bytes")),
]


@pytest.mark.parametrize("kwargs, named", IMPOSSIBLE, ids=[" ".join(n) for _, n in IMPOSSIBLE])
def test_limits_that_cannot_answer_a_lone_request_are_refused_naming_both_options(kwargs, named):
    from seqship.runtime.serve.protocol import LimitsError

    with pytest.raises(LimitsError) as e:
        Limits(**kwargs).validate()
    assert all(n in str(e.value) for n in named), str(e.value)


def test_limits_at_the_edge_of_possible_are_accepted():
    Limits().validate()
    Limits(max_delay_ms=29_900, timeout_s=30, max_texts=8192, max_queue_texts=8192).validate()
    Limits(max_body_bytes=1 << 20, max_buffered_bytes=2 << 20).validate()
    assert Limits(max_body_bytes=1 << 20).max_buffered_bytes == 8 << 20
