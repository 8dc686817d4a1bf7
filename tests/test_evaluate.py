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
    """Scoring asks llama.cpp (its C API) for the logits of the scored positions only, of several
    chunks in one decode; they must equal, row for row, the logits of every position that
    llama-cpp-python's public high-level API computes for each chunk alone (`Llama.eval` with
    `logits_all`, its `scores`), the way the scorer worked before."""
    from llama_cpp import Llama

    from edge.evaluate import Chunk, logprobs, scoring_context, log_softmax
    from edge.llamacpp import Model

    ref, _ = tiny_pair
    texts = [b"The lighthouse keeper climbed the stairs every evening.", b"Rain fell on the harbour at dusk.",
             b"She counted seventeen boats before the fog came in.", b"A gull, a rope, a bell."]
    with Model(ref) as m:
        toks = [m.tokenize(t, add_bos=True) for t in texts]
        chunks = [Chunk(t, np.arange(len(t) - 1)[::k]) for t, k in zip(toks, (1, 2, 3, 1))]
        with scoring_context(m, chunks, 64) as c:
            got = [g.copy() for g in logprobs(c, chunks, 64)]
    llm = Llama(model_path=str(ref), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
    try:
        for t, ch, g in zip(toks, chunks, got):
            llm.reset()
            llm.eval(t)
            full = log_softmax(np.array(llm.scores[: len(t)]))
            assert g.shape == (len(ch.rows), full.shape[1])
            np.testing.assert_allclose(g, full[ch.rows], rtol=1e-4, atol=1e-4)
            assert not np.allclose(g[0], g[1])
    finally:
        llm.close()


def test_scores_equal_the_plain_scorer_on_any_thread_count(tiny_pair, monkeypatch):
    """The scorer's statistics (KLD, its percentiles, same top, ppl) equal those of the plain way
    to score, each chunk decoded alone with the logits of every position through llama-cpp-python's
    public `Llama.eval`, on 1 thread and on 2."""
    from llama_cpp import Llama

    from edge.evaluate import chunk_tokens, compare, evaluate, log_softmax
    from edge.llamacpp import Model

    ref, q4 = tiny_pair
    text = "The lighthouse keeper climbed the stairs every evening, counting boats in the fog. " * 10
    with Model(ref) as m:
        chunks = chunk_tokens(m, text, 120, 48)

    def plain(path):
        llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False)
        try:
            out = []
            for c in chunks:
                llm.reset()
                llm.eval(c.tokens)
                out.append(log_softmax(np.array(llm.scores[: len(c.tokens)])[c.rows]))
            return out
        finally:
            llm.close()

    want = compare(plain(ref), plain(q4), chunks)
    for n in ("1", "2"):
        monkeypatch.setenv("EDGE_THREADS", n)
        got = next(r for r in evaluate(ref, {"q4": q4}, text=text, n_tokens=120, ctx=48, speed_tokens=0,
                                       progress=False) if r.name == "q4")
        assert got.n_scored == want["n_scored"] == 120
        for k in ("kld_mean", "kld_median", "kld_p99", "kld_max", "top1", "ppl"):
            assert getattr(got, k) == pytest.approx(want[k], rel=1e-5, abs=1e-9), (n, k)


def test_task_accuracy_by_teacher_forcing_equals_greedy_decoding(tiny_pair):
    """Chats whose expected reply is what greedy decoding says are settled by the one
    teacher-forced pass, the rest are decoded; either way the pairs equal plain greedy
    decoding of every chat, batched or one at a time."""
    from edge.data import Chat
    from edge.template import render_text
    from edge.evaluate import greedy, task_accuracy
    from edge.llamacpp import Model

    ref, _ = tiny_pair
    asks = [f"ISO date for {d} July 1999?" for d in (2, 13, 24, 5)]
    with Model(ref) as m:
        prompts = [m.tokenize(render_text([{"role": "user", "content": a}], add_generation_prompt=True)[0].encode(),
                              add_bos=True, special=True) for a in asks]
        said = [m.detokenize(r).decode("utf-8", "replace").strip() for r in greedy(m, prompts, 6, n_seq=1)]
        chats = [Chat(({"role": "user", "content": a}, {"role": "model", "content": s if i % 2 else "1999-07-02"}))
                 for i, (a, s) in enumerate(zip(asks, said))]
        together = task_accuracy(m, chats, max_new_tokens=6, n_seq=4)
        alone = task_accuracy(m, chats, max_new_tokens=6, n_seq=1)
    assert together == alone
    assert [g for g, _ in together[1]] == said                       # what greedy decoding says, every chat
    assert together[0] == sum(s == c.messages[1]["content"] for s, c in zip(said, chats)) / 4 >= 0.5


def test_compare_matches_hand_computed_kld():
    from edge.evaluate import Chunk, log_softmax, compare

    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    lp, lq = log_softmax(np.log(p)), log_softmax(np.log(q))
    out = compare([lp], [lq], [Chunk([0, 1, 2], np.arange(2))])  # targets: token 1 then token 2
    kl0 = sum(a * math.log(a / b) for a, b in zip(p[0], q[0]))
    assert out["kld_mean"] == pytest.approx(kl0 / 2, rel=1e-5)
    assert out["top1"] == 1.0
    assert out["ppl"] == pytest.approx(math.exp(-(math.log(0.3) + math.log(0.5)) / 2), rel=1e-5)


def test_task_accuracy_stops_on_end_of_turn(tiny_pair):
    from edge.data import Chat
    from edge.evaluate import task_accuracy
    from edge.llamacpp import Model

    ref, _ = tiny_pair
    chats = [Chat(({"role": "user", "content": "ISO date for 2 July 1999?"}, {"role": "model", "content": "1999-07-02"}))]
    with Model(ref) as llm:
        acc, pairs = task_accuracy(llm, chats, max_new_tokens=5)
    assert acc in (0.0, 1.0) and pairs[0][1] == "1999-07-02"
    assert len(llm_tokens := pairs[0][0]) <= 5 * 32  # at most 5 generated tokens
    assert llm_tokens == llm_tokens.strip()


def _row(name, family, size, kld, imatrix=False):
    return {"name": name, "recipe": name, "family": family, "path": f"/x/{name}.gguf", "size_bytes": size,
            "bpw": 5.0, "kld_mean": kld, "kld_p99": kld * 5, "top1": 0.9, "ppl": 10.0, "tok_s": 50.0,
            "task_accuracy": None, "imatrix": imatrix}


def test_front_check_judges_each_xl_variant_against_the_standard_front():
    """An XL variant passes when no standard type is no larger and no worse, and its KLD lies at
    or below the front: log-KLD linear in size between neighbouring non-dominated standard types."""
    from quantize.report import pareto_check

    std = [_row("Q4_0", "llama.cpp", 240, 0.2), _row("IQ4_NL", "llama.cpp", 245, 0.3),   # IQ4_NL: off the front
           _row("Q4_K_M", "llama.cpp", 250, 0.02), _row("Q8_0", "llama.cpp", 300, 0.001)]
    xl = [_row("A", "dynamic", 260, 0.01), _row("B", "dynamic", 260, 0.012), _row("C", "dynamic", 400, 0.0005),
          _row("D", "dynamic", 400, 0.002), _row("E", "dynamic", 200, 0.05), _row("F", "dynamic", 260, 0.01, True)]
    checks = {c["name"]: c for c in pareto_check(std + xl)}
    front_at_260 = 0.02 * (0.001 / 0.02) ** 0.2          # 0.010986
    a = checks["A"]
    assert a["ok"] and a["against"] == ["Q4_K_M", "Q8_0"] and a["front_kld"] == pytest.approx(front_at_260)
    assert a["margin"] == pytest.approx(front_at_260 / 0.01) and "passes: 1.10x below" in a["verdict"]
    b = checks["B"]
    assert b["ok"] is False and not b["dominated_by"] and b["beaten_by"] == ["Q4_K_M", "Q8_0"]
    assert b["margin"] < 1 and "FAILS: 1.09x above the Q4_K_M-Q8_0 front" in b["verdict"]
    assert checks["C"]["ok"] and checks["C"]["against"] == ["Q8_0"] and checks["C"]["margin"] == pytest.approx(2)
    d = checks["D"]
    assert d["ok"] is False and d["dominated_by"] == ["Q8_0"] and d["against"] == ["Q8_0"]
    assert "Q8_0 is no larger" in d["verdict"] and "2.00x lower" in d["verdict"]
    assert checks["E"]["ok"] and checks["E"]["against"] == ["Q4_0"] and checks["E"]["margin"] == pytest.approx(4)
    assert checks["F"]["ok"] is None and "not judged" in checks["F"]["verdict"]   # no standard type with an imatrix


def test_compare_gives_llama_perplexity_statistics():
    from edge.evaluate import Chunk, compare

    rng = np.random.default_rng(0)
    ref = [np.log(rng.dirichlet(np.ones(6), size=40)).astype(np.float32)]
    var = [np.log(rng.dirichlet(np.ones(6), size=40)).astype(np.float32)]
    chunk = Chunk([0] + list(rng.integers(0, 6, 40)), np.arange(40))
    out = compare(ref, var, [chunk])
    p, lp, lq = np.exp(ref[0]), ref[0].astype(np.float64), var[0].astype(np.float64)
    kl = (p * (lp - lq)).sum(-1)
    assert out["n_scored"] == 40 and out["kld_mean"] == pytest.approx(kl.mean(), rel=1e-5)
    assert out["kld_err"] == pytest.approx(kl.std() / math.sqrt(39), rel=1e-4)    # llama-perplexity's formula
    assert out["kld_median"] == pytest.approx(np.median(kl), rel=1e-5) and out["kld_max"] == pytest.approx(kl.max())
    assert out["kld_median"] <= out["kld_p90"] <= out["kld_p95"] <= out["kld_p99"] <= out["kld_p999"] <= out["kld_max"]
    same = (lp.argmax(-1) == lq.argmax(-1)).mean()
    assert out["top1"] == pytest.approx(same) and out["top1_err"] == pytest.approx(math.sqrt(same * (1 - same) / 39))


def test_reports_written(tmp_path):
    from quantize.report import write_reports

    rows = [_row("Q8_0", "llama.cpp", 300_000_000, 0.001), _row("Q4_K_XL", "dynamic", 250_000_000, 0.01),
            _row("Q4_K_XL+im", "dynamic", 250_000_000, 0.008, imatrix=True)]
    for r in rows:
        r["n_scored"] = 19
    paths = write_reports(rows, tmp_path, "test")
    data = json.loads((tmp_path / "report.json").read_text())
    assert all(REPORT_KEYS <= set(v) for v in data["variants"])
    assert data["n_scored"] == 19 and "only 19 scored tokens" in data["warnings"][0]
    md = (tmp_path / "report.md").read_text()
    assert "| Q4_K_XL | dynamic | no | 250.0 |" in md and "Q4_K_XL: FAILS: 10.00x above Q8_0" in md
    assert "19 scored positions" in md and "only 19 scored tokens" in md and "512" not in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["report_json"].endswith("report.json")


def test_threads_are_the_idle_cores_now(monkeypatch):
    """threads(): EDGE_THREADS when set; else the cores idle over the last 0.1 s (/proc/stat), at
    least 1 and at most this process's cores, whatever the minute-long load average says."""
    import os

    import edge.llamacpp as L

    monkeypatch.setenv("EDGE_THREADS", "3")
    assert L.threads() == 3
    monkeypatch.delenv("EDGE_THREADS")
    n = len(os.sched_getaffinity(0))
    for idle, want in ((0.0, 1), (0.4, 1), (1.6, min(2, n)), (64.0, n)):
        monkeypatch.setattr(L, "_THREADS", None)
        monkeypatch.setattr(L, "idle_cores", lambda window=0.1, v=idle: v)
        monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))   # not consulted while /proc/stat is there
        assert L.threads() == want, idle
    monkeypatch.undo()
    idle = L.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9
