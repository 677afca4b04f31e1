"""The `genrec` console script, and the README / CI contract."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from genrec_ext.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_ops_and_kernels(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"torch\s+2\.", out)
    assert re.search(r"genrec::token_merge\s+CPU", out)
    assert re.search(r"genrec::rq_assign\s+CPU", out)


def test_help_and_bad_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("genrec") is None, reason="console script not on PATH")
def test_console_script_is_installed():
    result = subprocess.run(["genrec", "info"], capture_output=True, text=True, check=True)
    assert "genrec::token_merge" in result.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_commands = [line for line in re.findall(r"```bash\n(.*?)```", readme, re.S) if "pytest" in line]
    assert len(test_commands) == 1, "README must show exactly one test command"
    assert test_commands[0].strip() in ci


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    """One run of `genrec demo` (two to three minutes) shared by the tests below: (output folder, what it
    printed)."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    return out, printed.getvalue()


def test_demo_runs_the_pipeline_built_so_far(demo_outputs):
    out, printed = demo_outputs
    assert "OK: kernel matches the reference" in printed
    assert "-> 0 after resolution" in printed  # every synthetic item got a unique SID
    assert (out / "sids" / "sid_table.json").exists() and (out / "data" / "logs.parquet").exists()
    # Both SFT objectives trained, and their loss fell.
    for objective in ("page", "point"):
        first, last = re.search(rf"{objective}-wise: .* loss ([\d.]+) -> ([\d.]+)", printed).groups()
        assert float(last) < float(first) - 0.5
        assert (out / f"sft_{objective}" / "model" / "genrec.json").exists()
    assert (out / "sft_loss.png").stat().st_size > 1000
    # The comparison table: both GenRec objectives clear popularity by a wide margin and stay below the Oracle;
    # HaR comes from unconstrained decoding (constrained decoding only ever emits real items).
    report = json.loads((out / "eval.json").read_text())
    assert list(report) == ["MostPop", "Oracle", "PW-NTP (GenRec)", "NTP", "GRPO-SR (GenRec)"]
    for row in ("PW-NTP (GenRec)", "NTP", "GRPO-SR (GenRec)"):
        for metric in ("HR@10", "NDCG@10"):
            assert report["MostPop"][metric] * 1.5 < report[row][metric] < report["Oracle"][metric]
        assert 0 <= report[row]["HaR@10"] < 0.05
    assert report["MostPop"]["HaR@10"] is None  # not generative: no HaR
    # GRPO-SR: a reward model that beats popularity, then alignment that raises the reward of the top-1 item
    # over its SFT start (measured on seed 1: R@1 0.47 -> 0.56) while keeping the hit rate (HR@50 within 2 points)
    auc = re.search(r"reward model: test AUC ([\d.]+) \(popularity ([\d.]+)\)", printed).groups()
    assert float(auc[0]) > float(auc[1]) + 0.05
    aligned, start = report["GRPO-SR (GenRec)"], report["PW-NTP (GenRec)"]
    assert aligned["R@1"] > start["R@1"] + 0.03 and aligned["HR@50"] > start["HR@50"] - 0.02
    assert 0 < report["MostPop"]["R@1"] < start["R@1"]
    assert (out / "rl" / "model" / "genrec.json").exists() and (out / "rl" / "rl.png").exists()


def test_eval_and_recommend_cli(demo_outputs, tmp_path, capsys):
    out, _ = demo_outputs
    common = ["--model", str(out / "sft_page" / "model"), "--sids", str(out / "sids")]
    assert main(["eval", *common, "--data", str(out / "data"), "--beam", "10", "--unconstrained", "--max-queries", "40",
                 "--out", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "eval_test.json").read_text())
    assert set(report) == {"constrained", "unconstrained"} and report["constrained"]["HaR@10"] == 0
    assert 0 <= report["constrained"]["HR@10"] <= 1 and "NDCG@5" in report["unconstrained"]
    # --ks picks the cut-offs; --max-queries draws queries at random with --seed (not the first ones in file order)
    for seed in (0, 1):
        assert main(["eval", *common, "--data", str(out / "data"), "--beam", "10", "--ks", "2,10", "--max-queries", "40",
                     "--seed", str(seed), "--out", str(tmp_path / f"ks{seed}"), "--quiet"]) == 0
    first, second = (json.loads((tmp_path / f"ks{s}" / "eval_test.json").read_text())["constrained"] for s in (0, 1))
    assert {"HR@2", "NDCG@2", "HR@10"} <= set(first) and "HR@5" not in first
    assert 0 < first["queries"] <= 40 and first != second  # another draw, other queries (pages without a click skipped)
    with pytest.raises(SystemExit, match="--ks 5,20: cut-offs must be between 1 and --beam 10"):
        main(["eval", *common, "--data", str(out / "data"), "--beam", "10", "--ks", "5,20", "--quiet"])
    history = tmp_path / "history.json"
    history.write_text(json.dumps([1000143, 1000591, 1000754]))
    capsys.readouterr()
    assert main(["recommend", *common, "--items", str(out / "data"), "--user-history", str(history), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].strip().startswith("1. 10")  # raw synthetic item ids are 1_000_000 + k
    # a user's mistake is one line, not a traceback: an unknown item id, a bad file, a missing flag
    history.write_text(json.dumps([42]))
    with pytest.raises(SystemExit, match=r"genrec recommend: 1 item id\(s\) are not in the catalogue .* e.g. \[42\]"):
        main(["recommend", *common, "--items", str(out / "data"), "--user-history", str(history)])
    with pytest.raises(SystemExit, match="--users needs --out"):
        main(["recommend", *common, "--items", str(out / "data"), "--users", str(history)])
    with pytest.raises(SystemExit, match="give --user-history .* or --users"):
        main(["recommend", *common, "--items", str(out / "data")])
    # batch mode: JSONL in, JSONL out (ids, scores, no seen item with --exclude-seen), an empty history allowed
    seen = [1000143, 1000591, 1000754]
    users = tmp_path / "users.jsonl"
    users.write_text("\n".join(json.dumps({"user": u, "history": h}) for u, h in (("a", seen), ("b", []), ("c", seen[:1]))))
    assert main(["recommend", *common, "--items", str(out / "data"), "--users", str(users), "--out",
                 str(tmp_path / "recs.jsonl"), "--top-k", "5", "--exclude-seen", "--device", "cpu", "--quiet"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "recs.jsonl").read_text().splitlines()]
    assert [r["user"] for r in recs] == ["a", "b", "c"] and all(len(r["items"]) == 5 for r in recs)
    assert not set(recs[0]["items"]) & set(seen) and recs[0]["scores"] == sorted(recs[0]["scores"], reverse=True)
    users.write_text('{"user": 1}\n')
    with pytest.raises(SystemExit, match='line 1: expected an object with a "history" list'):
        main(["recommend", *common, "--items", str(out / "data"), "--users", str(users), "--out", str(tmp_path / "x")])


def test_train_sft_cli_trains_saves_and_checks_the_vocabulary(demo_outputs, tmp_path, capsys):
    demo_outputs = demo_outputs[0]
    run = tmp_path / "run"
    args = ["train", "sft", "--data", str(demo_outputs / "data"), "--sids", str(demo_outputs / "sids"),
            "--out", str(run), "--steps", "3", "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    assert "finished step 3/3" in capsys.readouterr().out
    assert (run / "model" / "genrec.json").exists() and (run / "metrics.jsonl").exists()
    assert json.loads((run / "config.json").read_text())["packed"] is True  # the command's default
    # Point-wise with the w/o-TM ablation from the same command line, and one example per row
    assert main(args[:6] + ["--out", str(tmp_path / "point"), "--objective", "point", "--no-token-merger",
                             "--steps", "2", "--batch-size", "8", "--quiet"]) == 0
    assert main(args[:6] + ["--out", str(tmp_path / "unpacked"), "--no-packing", "--steps", "2", "--batch-size", "8",
                             "--quiet"]) == 0
    assert json.loads((tmp_path / "unpacked" / "config.json").read_text())["packed"] is False
    with pytest.raises(SystemExit, match="pack_tokens must be >= 2"):
        main(args[:6] + ["--out", str(tmp_path / "bad"), "--pack-tokens", "1", "--quiet"])
    # Sliding windows sharing rows (the stride), and the stride's misuses named
    assert main(args[:6] + ["--out", str(tmp_path / "stride"), "--history-stride", "5", "--steps", "2",
                             "--batch-size", "8", "--quiet"]) == 0
    assert json.loads((tmp_path / "stride" / "config.json").read_text())["sft"]["history_stride"] == 5
    with pytest.raises(SystemExit, match="--history-stride 99 must be <= --max-history 50"):
        main(args[:6] + ["--out", str(tmp_path / "bad"), "--history-stride", "99", "--quiet"])
    with pytest.raises(SystemExit, match="it needs --packing"):
        main(args[:6] + ["--out", str(tmp_path / "bad"), "--history-stride", "5", "--no-packing", "--quiet"])
    # A model from another SID vocabulary is refused by name.
    from genrec_ext.model import build_model
    from genrec_ext.sid import SIDVocab

    build_model("tiny", SIDVocab((8, 8, 8))).save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match=r"trained on SID levels \[8, 8, 8\], but .* has \[64, 64, 64\]"):
        main(args[:6] + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "other"), "--steps", "1", "--quiet"])
    assert main(["train", "plot", f"page={run}", f"point={tmp_path / 'point'}", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
