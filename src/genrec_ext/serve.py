"""Recommendations for item-id histories: :class:`Recommender` (what `genrec recommend` runs) and `genrec serve`,
the same over HTTP with the standard library's threaded server.

    POST /recommend  {"history": [item ids, oldest first], "top_k": 10, "exclude_seen": false, "user": any}
                  -> {"items": [...], "scores": [log p ...], "titles": [...], "user": ...}
    GET  /health     -> {"status": "ok", "items": N, "device": "cpu", ...}

A bad request (malformed JSON, a wrong field, an unknown item id, a body over the size limit, an unknown path or
method) gets a 4xx whose JSON ``error`` names what was wrong; only a fault of the server itself is a 500.

Why one search thread with greedy batching: concurrent requests queue up while a search runs, and the next search
takes all of them at once (up to ``max_batch``). The fused beam search costs much less per user in a batch (38x HF
at batch 64 against 29x at batch 1 on CPU), nothing waits for a batch to fill, and torch is only ever called from
one thread. A request's beam width depends on the request alone (never on what it was batched with), so its answer
does too.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ._config import DEFAULT_MAX_HISTORY
from .data import ItemCatalog, UnknownItemError
from .decoding import beam_search
from .model import GenRecModel
from .model.batch import history_prompts
from .sid import SIDTable, SIDTrie, catalog_index_of_sids, sid_tokens_for
from .sid.vocab import PAD

#: beam widths are rounded up to a multiple of this, so requests with similar needs share one search
_WIDTH_STEP = 16


@dataclass
class Ranked:
    """One user's recommendations, best first: catalogue indices and their log-probabilities."""

    items: list[int]
    scores: list[float]


class Recommender:
    """A trained GenRec model with its SID table and item catalogue, loaded once: histories of catalogue indices
    -> the top items of a trie-constrained beam search (every result is a real item).

    ``beam``: the smallest beam width searched (wider when ``top_k`` plus the excluded seen items need it)."""

    def __init__(self, model: GenRecModel, table: SIDTable, catalog: ItemCatalog, *,
                 max_history: int = DEFAULT_MAX_HISTORY, beam: int = 50) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        if tuple(table.level_sizes) != tuple(model.vocab.level_sizes):
            raise ValueError(f"the SID table's level sizes {list(table.level_sizes)} are not the model's "
                             f"{list(model.vocab.level_sizes)}: use the SID table the model was trained with")
        self.model, self.table, self.catalog = model.eval(), table, catalog
        self.max_history, self.beam = max_history, beam
        self.device = next(model.parameters()).device
        self.item_tokens = sid_tokens_for(catalog, table)
        self.trie = SIDTrie.from_table(table).to(self.device)
        self.to_catalog = catalog_index_of_sids(catalog, table)
        self.num_items = int((self.to_catalog >= 0).sum())  # items that can be recommended
        self.titles = catalog.text.get("title")

    @classmethod
    def load(cls, model_dir: str | Path, sids: str | Path, items: str | Path, *, device: str | None = None,
             max_history: int = DEFAULT_MAX_HISTORY, beam: int = 50) -> Recommender:
        """From a model directory (a run's ``model/``), a SID table directory and an item catalogue (anything
        ``load_catalog`` reads). A missing or wrong path is a ``FileNotFoundError`` / ``ValueError`` naming it."""
        from .sid.build import load_catalog
        from .train.distributed import resolve_device

        table = SIDTable.load(sids)
        if not (Path(model_dir) / "genrec.json").exists():
            raise FileNotFoundError(f"--model {model_dir} is not a GenRec model directory (a run's model/)")
        model = GenRecModel.from_pretrained(model_dir).to(resolve_device(device or "auto"))
        return cls(model, table, load_catalog(items), max_history=max_history, beam=beam)

    def indices(self, history: Sequence[Any]) -> np.ndarray:
        """Catalogue indices of raw item ids (an unknown id raises :class:`UnknownItemError` naming it)."""
        return self.catalog.index(list(history)) if len(history) else np.zeros(0, dtype=np.int64)

    def width(self, history: np.ndarray, top_k: int, exclude_seen: bool) -> int:
        """The beam width a request needs: ``top_k`` items left after dropping its seen ones, never under
        ``beam``; rounded up so that similar requests share a search."""
        need = top_k + (len(np.unique(history)) if exclude_seen else 0)
        return max(self.beam, -(-need // _WIDTH_STEP) * _WIDTH_STEP)

    def recommend(self, histories: Sequence[np.ndarray], top_k: int | Sequence[int] = 10,
                  exclude_seen: bool | Sequence[bool] = False) -> list[Ranked]:
        """The top items for each history (catalogue indices, oldest first; only the last ``max_history`` are
        read). ``top_k`` / ``exclude_seen``: one value for all, or one per history."""
        n = len(histories)
        top_k = [int(top_k)] * n if np.isscalar(top_k) else [int(k) for k in top_k]
        exclude_seen = [bool(exclude_seen)] * n if np.isscalar(exclude_seen) else [bool(e) for e in exclude_seen]
        if len(top_k) != n or len(exclude_seen) != n:
            raise ValueError(f"top_k and exclude_seen need one value per history ({n})")
        if any(k < 1 for k in top_k):
            raise ValueError(f"top_k must be >= 1, got {min(top_k)}")
        widths = [self.width(np.asarray(h), k, e) for h, k, e in zip(histories, top_k, exclude_seen)]
        out: list[Ranked | None] = [None] * n
        for width in sorted(set(widths)):
            rows = [i for i in range(n) if widths[i] == width]
            history, history_len, _ = history_prompts([np.asarray(histories[i])[-self.max_history:] for i in rows],
                                                      self.item_tokens, pad=PAD)
            result = beam_search(self.model, history.to(self.device), history_len.to(self.device), self.trie,
                                 beam_width=width)
            found, scores = result.items.cpu().numpy(), result.scores.cpu().numpy()
            for r, i in enumerate(rows):
                index = np.where(found[r] >= 0, self.to_catalog[np.maximum(found[r], 0)], -1)
                keep = index >= 0
                if exclude_seen[i]:
                    keep &= ~np.isin(index, np.asarray(histories[i]))
                out[i] = Ranked(index[keep][: top_k[i]].tolist(), scores[r][keep][: top_k[i]].tolist())
        return out  # type: ignore[return-value]

    def describe(self, ranked: Ranked) -> dict[str, Any]:
        """JSON-ready: raw item ids, scores and (when the catalogue has them) titles."""
        out: dict[str, Any] = {"items": [_plain(v) for v in self.catalog.id_of(np.asarray(ranked.items, dtype=np.int64))],
                               "scores": ranked.scores}
        if self.titles is not None:
            out["titles"] = [self.titles[i] for i in ranked.items]
        return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------------------------- batching


class _Batcher:
    """One thread that runs every search: takes whatever requests are queued (up to ``max_batch``) and answers
    them with one :meth:`Recommender.recommend` call."""

    def __init__(self, recommender: Recommender, max_batch: int) -> None:
        self.recommender, self.max_batch = recommender, max_batch
        self.requests: queue.Queue = queue.Queue()
        self.searches = self.batched = 0  # counters for /health
        self._thread = threading.Thread(target=self._run, name="genrec-search", daemon=True)
        self._thread.start()

    def submit(self, history: np.ndarray, top_k: int, exclude_seen: bool) -> Future:
        future: Future = Future()
        self.requests.put((history, top_k, exclude_seen, future))
        return future

    def close(self) -> None:
        self.requests.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self.requests.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.requests.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                ranked = self.recommender.recommend([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request (a 500)
                for *_, future in batch:
                    future.set_exception(exc)
                continue
            self.searches += 1
            self.batched += len(batch)
            for (*_, future), result in zip(batch, ranked):
                future.set_result(result)


# --------------------------------------------------------------------------------------------------- HTTP


class BadRequest(ValueError):
    """A client's mistake: answered with ``status`` and the message, never a 500."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


#: the largest request body accepted (a history of tens of thousands of ids fits)
MAX_BODY_BYTES = 1 << 20
_FIELDS = {"history", "top_k", "exclude_seen", "user"}


def parse_request(body: bytes, recommender: Recommender, max_top_k: int) -> tuple[Any, np.ndarray, int, bool]:
    """``(user, history indices, top_k, exclude_seen)`` of a /recommend body, or :class:`BadRequest` naming
    the fault."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"the body must be a JSON object with a \"history\" list, got {type(request).__name__}")
    unknown = sorted(set(request) - _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    history = request.get("history")
    if not isinstance(history, list):
        raise BadRequest("\"history\" must be a list of item ids, oldest first"
                         + ("" if "history" in request else " (missing)"))
    bad = [v for v in history if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise BadRequest(f"\"history\" holds {json.dumps(bad[0])}: item ids are strings or integers")
    top_k = request.get("top_k", 10)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= max_top_k:
        raise BadRequest(f"\"top_k\" must be an integer from 1 to {max_top_k}, got {json.dumps(top_k)}")
    exclude_seen = request.get("exclude_seen", False)
    if not isinstance(exclude_seen, bool):
        raise BadRequest(f"\"exclude_seen\" must be true or false, got {json.dumps(exclude_seen)}")
    if len({type(v) for v in history}) > 1:
        history = [str(v) for v in history]  # ints and strings mixed: compare as strings (as the catalogue does)
    try:
        indices = recommender.indices(history)
    except UnknownItemError as exc:
        raise BadRequest(str(exc), HTTPStatus.UNPROCESSABLE_ENTITY) from None
    except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:  # e.g. an id beyond int64
        raise BadRequest(f"\"history\" holds ids the catalogue cannot read: {exc}") from None
    return request.get("user"), indices, top_k, exclude_seen


class RecommendServer(ThreadingHTTPServer):
    """``genrec serve``'s server: a thread per connection for parsing, one search thread (:class:`_Batcher`)."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: socketserver's 5 reset connections of a burst of clients

    def __init__(self, recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, *,
                 max_batch: int = 64, max_top_k: int = 100, model_name: str = "") -> None:
        self.recommender, self.max_top_k, self.model_name = recommender, max_top_k, model_name
        self.batcher = _Batcher(recommender, max_batch)
        self.started = time.time()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "items": self.recommender.num_items,
                "sid_levels": list(self.recommender.table.level_sizes), "device": str(self.recommender.device),
                "max_top_k": self.max_top_k, "uptime_s": round(time.time() - self.started, 3),
                "searches": self.batcher.searches, "requests_answered": self.batcher.batched}

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    server: RecommendServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    # headers and body leave in two writes; with Nagle on, the body waits for the client's delayed ACK (~40 ms)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no line per request
        pass

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, {"error": message, "status": int(status)})

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path.split("?")[0] in ("/health", "/healthz"):
            self._send(HTTPStatus.OK, self.server.health())
        elif self.path.split("?")[0] == "/recommend":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /recommend with a JSON body")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}: POST /recommend, GET /health")

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("Content-Length")
        try:
            size = int(length) if length is not None else -1
        except ValueError:
            size = -1
        if size < 0:
            self.close_connection = True
            return self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if size > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body has {size} bytes, more than the {MAX_BODY_BYTES} accepted")
        body = self.rfile.read(size)
        if self.path.split("?")[0] != "/recommend":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}: POST /recommend, GET /health")
        try:
            user, history, top_k, exclude_seen = parse_request(body, self.server.recommender, self.server.max_top_k)
        except BadRequest as exc:
            return self._error(exc.status, str(exc))
        try:
            ranked = self.server.batcher.submit(history, top_k, exclude_seen).result()
        except Exception as exc:  # noqa: BLE001 - the server's own fault
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
        payload = self.server.recommender.describe(ranked)
        if user is not None:
            payload["user"] = user
        self._send(HTTPStatus.OK, payload)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 64,
          max_top_k: int = 100, model_name: str = "", ready=None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); ``ready(server)`` runs once it listens (e.g. to print its URL)."""
    server = RecommendServer(recommender, host, port, max_batch=max_batch, max_top_k=max_top_k, model_name=model_name)
    if threading.current_thread() is threading.main_thread():  # `docker stop` / `kill` end it like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
