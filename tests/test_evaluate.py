"""Evaluation through llama.cpp: KLD is zero for a file against itself and positive for a quantized
copy; the report files carry the keys the budget and TUI stages read; the Pareto check flags
the right pairs. Uses the tiny Gemma 3 (real tokenizer) exported with edge.export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

REPORT_KEYS = {"name", "recipe", "path", "size_bytes", "bpw", "kld_mean", "kld_p99", "top1", "ppl", "tok_s",
               "task_accuracy"}


@pytest.fixture(scope="module")
def tiny_pair(tiny_dir, tmp_path_factory):
    import gguf

    from edge.export import export_gguf
    from quantize.llama import quantize_file

    d = tmp_path_factory.mktemp("eval")
    ref = d / "tiny-F32.gguf"
    export_gguf(tiny_dir, ref, "f32")
    q4 = d / "tiny-Q4_0.gguf"
    quantize_file(ref, q4, ftype=gguf.LlamaFileType.MOSTLY_Q4_0)
    return ref, q4


def test_kld_zero_against_itself_positive_when_quantized(tiny_pair):
    from edge.evaluate import evaluate

    ref, q4 = tiny_pair
    text = "The lighthouse keeper climbed the stairs every evening. " * 12
    rows = evaluate(ref, {"self": ref, "q4": q4}, text=text, n_tokens=96, ctx=48, speed_tokens=4, progress=False)
    by = {r.name: r for r in rows}
    assert by["reference"].kld_mean == 0.0 and by["self"].kld_mean == 0.0 and by["self"].top1 == 1.0
    assert by["self"].ppl == pytest.approx(by["reference"].ppl, rel=1e-6)
    assert by["q4"].kld_mean > 1e-6 and by["q4"].kld_p99 >= by["q4"].kld_mean
    assert by["q4"].size_bytes < by["reference"].size_bytes and by["reference"].bpw == pytest.approx(32.0)
    assert 4.0 < by["q4"].bpw < 9.0 and by["q4"].tok_s > 0
    assert REPORT_KEYS <= set(by["q4"].as_dict())


def test_logits_of_chosen_rows_equal_those_of_a_full_decode(tiny_pair):
    """Scoring asks llama.cpp for the logits of the scored positions only; they must be the
    same rows, in the same order, as when every position's logits are computed."""
    from edge.evaluate import _clear, _decode, _llama

    ref, _ = tiny_pair
    with _llama(ref, 64, False) as llm:
        tokens = llm.tokenize(b"The lighthouse keeper climbed the stairs every evening.", add_bos=True)
        rows = np.array([1, 2, 5, len(tokens) - 2])
        _clear(llm)
        full = _decode(llm, tokens, 0, np.arange(len(tokens))).copy()
        _clear(llm)
        some = _decode(llm, tokens, 0, rows).copy()
        _clear(llm)
        last = _decode(llm, tokens, 0).copy()
    assert some.shape == (len(rows), full.shape[1])
    np.testing.assert_allclose(some, full[rows], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(some[0], some[1])


def test_compare_matches_hand_computed_kld():
    from edge.evaluate import Chunk, _log_softmax, compare

    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    lp, lq = _log_softmax(np.log(p)), _log_softmax(np.log(q))
    out = compare([lp], [lq], [Chunk([0, 1, 2], np.arange(2))])  # targets: token 1 then token 2
    kl0 = sum(a * math.log(a / b) for a, b in zip(p[0], q[0]))
    assert out["kld_mean"] == pytest.approx(kl0 / 2, rel=1e-5)
    assert out["top1"] == 1.0
    assert out["ppl"] == pytest.approx(math.exp(-(math.log(0.3) + math.log(0.5)) / 2), rel=1e-5)


def test_task_accuracy_stops_on_end_of_turn(tiny_pair):
    from edge.data import Chat
    from edge.evaluate import _llama, task_accuracy

    ref, _ = tiny_pair
    chats = [Chat(({"role": "user", "content": "ISO date for 2 July 1999?"}, {"role": "model", "content": "1999-07-02"}))]
    with _llama(ref, 128, False) as llm:
        acc, pairs = task_accuracy(llm, chats, max_new_tokens=5)
    assert acc in (0.0, 1.0) and pairs[0][1] == "1999-07-02"
    assert len(llm_tokens := pairs[0][0]) <= 5 * 32  # at most 5 generated tokens
    assert llm_tokens == llm_tokens.strip()


def _row(name, family, size, kld, imatrix=False):
    return {"name": name, "recipe": name, "family": family, "path": f"/x/{name}.gguf", "size_bytes": size,
            "bpw": 5.0, "kld_mean": kld, "kld_p99": kld * 5, "top1": 0.9, "ppl": 10.0, "tok_s": 50.0,
            "task_accuracy": None, "imatrix": imatrix}


def test_pareto_check_flags_larger_standard_types_with_lower_kld():
    from quantize.cli import pareto_check

    rows = [_row("Q8_0", "llama.cpp", 300, 0.001), _row("Q4_K_M", "llama.cpp", 250, 0.02),
            _row("Q4_K_XL", "dynamic", 260, 0.01), _row("Q8_K_XL", "dynamic", 400, 0.0005),
            _row("SMALL_XL", "dynamic", 200, 0.05)]
    checks = {c["name"]: c for c in pareto_check(rows)}
    assert checks["Q8_K_XL"]["ok"] and not checks["Q8_K_XL"]["beaten_by"]
    assert checks["Q4_K_XL"]["beaten_by"] == ["Q8_0"] and checks["Q4_K_XL"]["dominated_by"] == []
    assert set(checks["SMALL_XL"]["beaten_by"]) == {"Q8_0", "Q4_K_M"} and not checks["SMALL_XL"]["dominated_by"]


def test_reports_written(tmp_path):
    from quantize.cli import write_reports

    rows = [_row("Q8_0", "llama.cpp", 300_000_000, 0.001), _row("Q4_K_XL", "dynamic", 250_000_000, 0.01),
            _row("Q4_K_XL+im", "dynamic", 250_000_000, 0.008, imatrix=True)]
    paths = write_reports(rows, tmp_path, "test")
    data = json.loads((tmp_path / "report.json").read_text())
    assert all(REPORT_KEYS <= set(v) for v in data["variants"])
    md = (tmp_path / "report.md").read_text()
    assert "| Q4_K_XL | dynamic | no | 250.0 |" in md and "FAILS against Q8_0" in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["report_json"].endswith("report.json")


def test_demo_stage_skips_without_reference(tmp_path):
    from edge.demo import DemoContext
    from edge.runfolder import Run
    from quantize.cli import demo_stage

    res = demo_stage(DemoContext(run=Run.open(tmp_path)))
    assert res.summary.startswith("skipped") and "reference" in res.summary
