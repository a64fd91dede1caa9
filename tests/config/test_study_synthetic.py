"""The synthetic study: every row's config, the grid's jobs and resume rule, the report."""

import json

import helpers  # noqa: F401  (puts the repo root on sys.path)
import pytest

from benchmarks import study_report
from benchmarks import study_synthetic as study
from configs import study_synthetic
from rankseg_jax import config as config_lib


@pytest.mark.parametrize("row", study.ROWS, ids=lambda r: r.name)
def test_every_row_validates_and_differs_only_in_the_head(row):
    c = study_synthetic.get_config(row.variant(1))
    config_lib.validate(c, check_files=False)
    ref = study_synthetic.get_config(f"k={row.k},seed=1" + (
        f",steps={study.LONG_STEPS}" if row.long else ""))
    # Same data, backbone, optimiser and schedule in every row of a K.
    for section in ("data", "optim", "train", "test"):
        assert c[section].to_dict() == ref[section].to_dict(), section
    assert c.model.vit.to_dict() == ref.model.vit.to_dict() and c.seed == 1
    assert c.data.synthetic.confusable == 4 and c.model.num_classes == row.k
    r = c.model.rankseg
    kind = row.kind
    assert c.train.steps == (study.LONG_STEPS if row.long else 600)
    assert r.enabled == (kind != "baseline")
    if kind == "baseline":
        assert c.model.head.n_layers == 2
    elif kind == "mt":
        assert (r.topk, r.temperature) == (row.k, "shared")
    elif kind == "mt_ls":
        assert (r.topk, r.temperature) == (50, "shared")
    elif kind.startswith("kappa"):
        assert r.topk == int(kind[5:]) and r.temperature == "rank_adaptive"
    elif kind.startswith("oracle"):
        assert r.oracle == kind[len("oracle_"):]
    else:
        assert (r.topk, r.temperature, r.oracle) == (
            {48: 16, 150: 50, 847: 100}[row.k], "rank_adaptive", "none")


def test_paper_kappa_and_bad_variants():
    assert [study_synthetic.default_kappa(k) for k in (48, 150, 847, 1284)] == [16, 50, 100, 100]
    for bad in ("k=1", "steps=0", "smoke", "vit_l"):
        with pytest.raises(config_lib.ConfigError):
            study_synthetic.get_config(bad)


def test_jobs_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "RESULTS", str(tmp_path))
    quick, default, full = (study.jobs(g, [0]) for g in study.GRIDS)
    assert len(quick) < len(default) < len(full)
    names = [r.name for r, _, _ in default]
    assert "k150_long_baseline" in names and "k847_long_baseline" not in names
    assert "k847_long_baseline" in [r.name for r, _, _ in full]
    # Oracle-at-eval rows are written by their RankSeg job, never trained on their own.
    row, _, outputs = next(j for j in default if j[0].name == "k150_long_rankseg")
    assert [o.name for o in outputs] == ["k150_long_rankseg", "k150_long_oracle_eval"]
    assert all(not r.from_row for r, _, _ in full)
    assert study.missing(outputs, 0) == outputs
    (tmp_path / "k150_long_rankseg_seed0.json").write_text("{}")
    assert [o.name for o in study.missing(outputs, 0)] == ["k150_long_oracle_eval"]
    # Phase, then seed: the cheap phase complete before the costly one starts; rows limited
    # to some seeds below the full grid (the 600-step K = 150 rows, the train+eval oracle at
    # 2400 steps: seed 0) run every seed in the full grid.
    three = study.jobs("default", [0, 1, 2])
    order = [(r.phase, s) for r, s, _ in three]
    assert order == sorted(order) and three[0][0].phase == 0 and not three[0][0].long
    assert [(r.name, s) for r, s, _ in three if r.phase == 1] == [
        ("k150_long_baseline", 0), ("k150_long_rankseg", 0), ("k150_long_oracle_train_eval", 0),
        ("k150_long_baseline", 1), ("k150_long_rankseg", 1),
        ("k150_long_baseline", 2), ("k150_long_rankseg", 2)]
    assert [s for r, s, _ in three if r.name == "k150_baseline"] == [0]
    assert [s for r, s, _ in study.jobs("full", [0, 1, 2]) if r.name == "k150_baseline"] == [
        0, 1, 2]
    exp = study.expected("default", [0, 1, 2])
    assert (study.BY_NAME["k150_oracle_eval"], 0) in exp
    assert (study.BY_NAME["k150_oracle_eval"], 1) not in exp


def _result(row, seed, miou, **ml):
    return {"row": row, "seed": seed, "K": int(row[1:].split("_")[0]), "kappa": 50,
            "steps": 2400, "commit": "abc", "jax": "x", "cpu_count": 2, "date": "d",
            "command": "python main.py ...", "train_seconds": 60.0,
            "metrics": {"mIoU": miou, "mAcc": miou, "aAcc": miou, **ml}}


def test_report_aggregates_and_applies_the_decision_rule(tmp_path):
    rows = [r for r in study.ROWS if r.prefix == "k150_long" and r.grid != "full"]
    values = {"k150_long_baseline": (0.10, 0.12, 0.11),
              "k150_long_rankseg": (0.20, 0.21, 0.23),
              "k150_long_oracle_eval": (0.10, 0.14, 0.09)}
    for name, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            ml = {} if name == "k150_long_baseline" else {"img_recall": 0.5, "img_AP": 0.4,
                                                     "img_precision": 0.1, "pixel_recall": 0.6}
            (tmp_path / f"{name}_seed{seed}.json").write_text(json.dumps(_result(name, seed, v,
                                                                                 **ml)))
    expected = [(r, s) for r in rows for s in (0, 1, 2)
                if r.kind != "oracle_train_eval" or s == 0]
    doc = study_report.write_report(rows, str(tmp_path), [0, 1, 2], expected,
                                    doc=str(tmp_path / "doc.md"),
                                    plot_path=str(tmp_path / "plot.png"))
    text = open(doc).read()
    # RankSeg - baseline: +10, +9, +12 -> mean 10.3, std 1.5, t = 11.8 > 4.30.
    assert "| K=150 (2400 steps): RankSeg > baseline (Table 1) | 10.3 ± 1.5 (3 seeds) | yes, " \
        "beyond noise" in text
    # Oracle - RankSeg: -10, -7, -14: opposite sign, t = 5.0.
    assert ("(2400 steps): oracle (GT at eval) > RankSeg (paper Fig. 3: +17 to +27) | "
            "-10.3 ± 3.5 (3 seeds) | **opposite**, beyond noise (t = 5.1)") in text
    assert "| Segmenter baseline | `baseline` | 50 | **11.0 ± 1.0** | – |" in text
    assert (tmp_path / "plot.png").stat().st_size > 1000
    # The grid's missing results are named (the rows outside it are not).
    assert "Not run (budget): `k150_long_oracle_train_eval` (seeds 0)." in text
    assert "3 seeds of 10" not in text and "9 of the grid's 10 result files" in text
    assert study_report.verdict([1.0, -1.0, 0.5]).startswith("within noise")


def test_growth_with_k_needs_two_seeds_per_k(tmp_path):
    rows = [r for r in study.ROWS if r.prefix in ("k48", "k150")]
    seeds = {"k48": (0, 1, 2), "k150": (0,)}
    for name, v in (("baseline", 0.10), ("rankseg", 0.08)):
        for prefix, ss in seeds.items():
            for seed in ss:
                row = f"{prefix}_{name}"
                (tmp_path / f"{row}_seed{seed}.json").write_text(
                    json.dumps(_result(row, seed, v + 0.01 * seed)))
    text = open(study_report.write_report(rows, str(tmp_path), [0, 1, 2],
                                          doc=str(tmp_path / "doc.md"),
                                          plot_path=str(tmp_path / "p.png"))).read()
    assert "K=48: -2.0 (n=3), K=150: -2.0 (n=1) | no verdict (fewer than 2 seeds " \
        "at K=150) |" in text
