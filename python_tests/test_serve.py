"""`genrec serve` and the Recommender behind it (and `genrec recommend`): answers equal to a plain beam search,
request validation (4xx naming the fault, never a 500), a health endpoint, concurrent clients batched into one
search with the answers they would get alone, and the CLI's one-line errors."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from genrec_ext.cli import main
from genrec_ext.decoding import beam_search
from genrec_ext.experiments import synthetic_task
from genrec_ext.model import build_model
from genrec_ext.model.batch import history_prompts
from genrec_ext.serve import MAX_BODY_BYTES, RecommendServer, Recommender
from genrec_ext.sid import SIDTrie, SIDVocab, sid_tokens_for
from genrec_ext.sid.vocab import PAD


@pytest.fixture(scope="module")
def recommender():
    task = synthetic_task({"num_items": 120, "num_users": 30, "seed": 0}, max_history=50,
                          sid={"levels": 2, "codebook_size": 16})
    model = build_model("tiny", SIDVocab(task.table.level_sizes), seed=0).eval()
    return Recommender(model, task.table, task.catalog, beam=16)


@pytest.fixture(scope="module")
def server(recommender):
    server = RecommendServer(recommender, "127.0.0.1", 0, max_batch=8, max_top_k=20, model_name="tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _ids(recommender, n, start=0):
    return [int(v) for v in recommender.catalog.ids[start:start + n]]


def _call(server, method, path, body=None, headers=None, raw=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def test_recommender_equals_a_plain_beam_search(recommender):
    history = recommender.indices(_ids(recommender, 5, 10))
    ranked = recommender.recommend([history], top_k=7)[0]
    tokens, length, _ = history_prompts([history], sid_tokens_for(recommender.catalog, recommender.table), pad=PAD)
    plain = beam_search(recommender.model, tokens, length, SIDTrie.from_table(recommender.table), beam_width=16)
    want = recommender.to_catalog[plain.items[0, :7].numpy()]
    assert ranked.items == want.tolist()
    np.testing.assert_allclose(ranked.scores, plain.scores[0, :7].numpy(), rtol=1e-5)
    # excluding seen items widens the search instead of returning fewer items
    seen_heavy = recommender.indices(recommender.catalog.ids[recommender.to_catalog[plain.items[0, :12].numpy()]])
    kept = recommender.recommend([seen_heavy], top_k=10, exclude_seen=True)[0]
    assert len(kept.items) == 10 and not set(kept.items) & set(seen_heavy.tolist())
    assert kept.scores == sorted(kept.scores, reverse=True)
    # an empty history is a cold-start request, not an error
    assert len(recommender.recommend([np.zeros(0, dtype=np.int64)], top_k=3)[0].items) == 3
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        recommender.recommend([history], top_k=0)


def test_recommend_and_health(server, recommender):
    status, health = _call(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["items"] == len(recommender.catalog)
    assert health["sid_levels"] == list(recommender.table.level_sizes) and health["max_top_k"] == 20
    history = _ids(recommender, 4, 3)
    status, answer = _call(server, "POST", "/recommend", {"history": history, "top_k": 5, "user": "u1"})
    assert status == 200 and answer["user"] == "u1" and len(answer["items"]) == 5
    alone = recommender.describe(recommender.recommend([recommender.indices(history)], top_k=5)[0])
    assert answer["items"] == alone["items"]
    np.testing.assert_allclose(answer["scores"], alone["scores"], rtol=1e-5)
    # ids given as strings find integer ids (as the catalogue compares them), exclude_seen drops the history
    status, again = _call(server, "POST", "/recommend", {"history": [str(v) for v in history], "exclude_seen": True})
    assert status == 200 and len(again["items"]) == 10 and not set(again["items"]) & set(history)


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the body is not JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"{}", 400, '"history" must be a list of item ids, oldest first (missing)'),
    (b'{"history": 5}', 400, '"history" must be a list'),
    (b'{"history": [1.5]}', 400, '"history" holds 1.5'),
    (b'{"history": [[1]]}', 400, '"history" holds [1]'),
    (b'{"history": [], "top_k": 0}', 400, '"top_k" must be an integer from 1 to 20, got 0'),
    (b'{"history": [], "top_k": 21}', 400, "got 21"),
    (b'{"history": [], "top_k": "5"}', 400, 'got "5"'),
    (b'{"history": [], "exclude_seen": 1}', 400, '"exclude_seen" must be true or false'),
    (b'{"history": [], "topk": 5}', 400, "unknown field(s) ['topk']"),
    (b'{"history": [42]}', 422, "1 item id(s) are not in the catalogue"),
    (b'{"history": [99999999999999999999999]}', 400, "ids the catalogue cannot read"),
    (b"\xff\xfe", 400, "the body is not JSON"),
])
def test_bad_requests_get_4xx_naming_the_fault(server, body, status, message):
    got, payload = _call(server, "POST", "/recommend", raw=body)
    assert got == status and message in payload["error"] and payload["status"] == status


def test_bad_paths_methods_and_sizes(server):
    assert _call(server, "GET", "/nope")[0] == 404
    assert _call(server, "POST", "/nope", {"history": []})[0] == 404
    status, payload = _call(server, "GET", "/recommend")
    assert status == 405 and "use POST" in payload["error"]
    status, payload = _call(server, "POST", "/recommend", raw=b"x", headers={"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert status == 413 and "more than" in payload["error"]
    # the server still answers after all of the above
    assert _call(server, "POST", "/recommend", {"history": []})[0] == 200


def test_concurrent_clients_are_batched_and_get_their_own_answers(server, recommender):
    rng = np.random.default_rng(0)
    requests = [{"history": [int(v) for v in rng.choice(recommender.catalog.ids, int(rng.integers(0, 8)))],
                 "top_k": int(rng.integers(1, 12)), "exclude_seen": bool(rng.integers(0, 2))} for _ in range(24)]
    before = server.batcher.searches
    answers = [None] * len(requests)

    def client(i):
        answers[i] = _call(server, "POST", "/recommend", requests[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for request, (status, answer) in zip(requests, answers):
        assert status == 200
        alone = recommender.recommend([recommender.indices(request["history"])], request["top_k"],
                                      request["exclude_seen"])[0]
        assert answer["items"] == recommender.describe(alone)["items"]
    searches = server.batcher.searches - before
    assert 1 <= searches < len(requests)  # at least two requests shared a search


def test_cli_errors_are_one_line(tmp_path, recommender):
    model_dir = tmp_path / "model"
    recommender.model.save_pretrained(model_dir)
    recommender.table.save(tmp_path / "sids")
    recommender.catalog.save(tmp_path / "data")
    common = ["--sids", str(tmp_path / "sids"), "--items", str(tmp_path / "data")]
    with pytest.raises(SystemExit, match=r"genrec serve: --model .*nothing is not a GenRec model directory"):
        main(["serve", "--model", str(tmp_path / "nothing"), *common])
    with pytest.raises(SystemExit, match="genrec serve: --max-batch and --max-top-k must be >= 1"):
        main(["serve", "--model", str(model_dir), *common, "--max-batch", "0"])
    # a taken port is one line too
    with RecommendServer(recommender, "127.0.0.1", 0) as taken:
        port = str(taken.server_address[1])
        with pytest.raises(SystemExit, match=f"genrec serve: cannot listen on 127.0.0.1:{port}"):
            main(["serve", "--model", str(model_dir), *common, "--port", port])
    # recommend through the same Recommender: one user printed
    history = tmp_path / "h.json"
    history.write_text(json.dumps(_ids(recommender, 3)))
    assert main(["recommend", "--model", str(model_dir), *common, "--user-history", str(history), "--top-k", "2",
                 "--beam", "16"]) == 0


def test_genrec_serve_process_answers_and_stops_on_sigterm(tmp_path, recommender):
    recommender.model.save_pretrained(tmp_path / "model")
    recommender.table.save(tmp_path / "sids")
    recommender.catalog.save(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "genrec_ext.cli", "serve", "--model", str(tmp_path / "model"),
                             "--sids", str(tmp_path / "sids"), "--items", str(tmp_path / "data"), "--port", "0",
                             "--beam", "16", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + proc.stdout.read()
        host, port = line.split("listening on http://")[1].split()[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/recommend", body=json.dumps({"history": _ids(recommender, 2), "top_k": 4}))
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["items"]) == 4
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
