"""The static run report: a page that parses, plots that are real PNGs, escaped text, and a
page that still renders when the run recorded little."""

import random
import re
from html.parser import HTMLParser

import pytest

from pipelines.report import history_series, mape, pareto_front, write_report

HEADINGS = [
    "Summary",
    "Accuracy–latency Pareto front",
    "Operator choices per layer",
    "Latency lookup table",
    "Latency predictor: predicted vs measured",
    "Evolution history",
    "Co-exploration against architecture-only",
    "GoldenNets: accuracy and latency at every depth",
    "Provenance",
]
OPS = [
    "mb_k3_e3",
    "mb_k3_e6",
    "mb_k5_e3",
    "mb_k5_e6",
    "mb_k7_e6",
    "ds_k3",
    "ds_k5",
    "fmb_k3_e4",
    "fmb_k5_e4",
    "shuffle_k3",
    "shuffle_k5",
    "skip",
]
VOID = {"meta", "img", "br", "hr", "link", "input"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Checks that every non-void tag is closed in order, and collects img sources, hrefs,
    h2 texts and the text of each table row."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.imgs, self.hrefs, self.h2, self.rows = [], [], [], [], []
        self._h2, self._row = None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])
        if tag == "h2":
            self._h2 = []
        if tag == "tr":
            self._row = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "h2":
            self.h2.append("".join(self._h2))
            self._h2 = None
        if tag == "tr":
            self.rows.append(" | ".join(self._row))
            self._row = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2.append(data)
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def parse(text: str) -> PageParser:
    p = PageParser()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


def section(text: str, key: str) -> str:
    """The HTML of one section of the page."""
    m = re.search(rf'<section id="{key}">(.*?)</section>', text, re.S)
    assert m, key
    return m.group(1)


def make_device(name: str, seed: int, budgets=(0.08, 0.12), rejected_budget=None) -> dict:
    """A device as the runner writes it: 12-op x 6-layer LUT with holes, two stages of
    evolution, a predictor scatter and one model per budget."""
    rng = random.Random(seed)
    ms = [
        [None if (i + j) % 5 == 0 else round(rng.uniform(0.002, 0.05), 4) for j in range(6)]
        for i in range(len(OPS))
    ]
    history = []
    for stage, gens in (("A", 3), ("B", 4)):
        for g in range(gens):
            pop = []
            for _ in range(10):
                ops = [rng.choice(OPS) for _ in range(6)]
                pop.append(
                    {
                        "arch": "-".join(ops),
                        "fitness": round(rng.uniform(0.4, 0.7), 3),
                        "latency_ms": round(rng.uniform(0.04, 0.15), 4),
                    }
                )
            history.append({"stage": stage, "generation": g, "population": pop})
    scatter = []
    for _ in range(15):
        m = rng.uniform(0.04, 0.15)
        scatter.append({"arch": "x", "predicted_ms": m * rng.uniform(0.85, 1.15), "measured_ms": m})
    models = []
    for k, b in enumerate(budgets):
        ops = [OPS[(seed + k + j) % len(OPS)] for j in range(6)]
        widths = [1.0, 0.5, 1.0, 0.75, 1.0, 1.0]
        arch = f"{name}-arch{k}-" + "-".join(ops)
        models.append(
            {
                "budget_ms": b,
                "arch": arch,
                "ops": ops,
                "widths": widths,
                "predicted_ms": b * 0.9,
                "measured_ms": b * (1.2 if b == rejected_budget else 0.95),
                "test_acc": 0.86 - 0.01 * k,
                "val_acc": 0.62,
                "accepted": b != rejected_budget,
                "bundle": f"bundles/{name}-{b}ms",
            }
        )
    return {
        "name": name,
        "kind": "cpu",
        "runtime": "litert fp32",
        "lut": {"ops": OPS, "layers": list(range(6)), "ms": ms},
        "reduced_ops": [[OPS[j], OPS[(j + 3) % len(OPS)], "skip"] for j in range(6)],
        "history": history,
        "scatter": scatter,
        "models": models,
    }


def make_data(devices) -> dict:
    return {
        "title": "Hurricane run demo",
        "pipeline": "demo",
        "created": "2026-12-01T12:00:00+0000",
        "provenance": {
            "hurricane": "0.1.0",
            "git_commit": "abc1234",
            "torch": "2.13.0",
            "seeds": [0, 1],
        },
        "space": {
            "name": "demo",
            "layers": [
                {"index": i, "cout": 16 * (1 + i // 2), "stride": 1 + i % 2, "input_hw": [14, 14]}
                for i in range(6)
            ],
        },
        "devices": devices,
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The report of a two-device run, written once; the 0.08 ms model of the DSP is the only
    one that missed its budget."""
    data = make_data(
        [make_device("local-litert", 1), make_device("hexagon-dsp", 2, rejected_budget=0.08)]
    )
    out = tmp_path_factory.mktemp("run") / "report"
    path = write_report(out, data)
    return data, out, path, path.read_text(encoding="utf-8")


def test_page_parses_with_every_section_in_order(demo):
    _, out, path, text = demo
    assert path == out / "index.html" and path.is_file()
    p = parse(text)
    assert p.h2 == HEADINGS
    assert "<script" not in text.lower() and "http" not in text


def test_every_architecture_string_is_on_the_page(demo):
    data, _, _, text = demo
    rows = parse(text).rows
    for dev in data["devices"]:
        for m in dev["models"]:
            assert any(m["arch"] in r and r.startswith(dev["name"]) for r in rows), m["arch"]


def test_not_accepted_marks_exactly_the_model_that_missed_its_budget(demo):
    data, _, _, text = demo
    assert text.count("NOT ACCEPTED") == 1
    flagged = [r for r in parse(text).rows if "NOT ACCEPTED" in r]
    rejected = data["devices"][1]["models"][0]
    assert rejected["accepted"] is False
    assert len(flagged) == 1 and rejected["arch"] in flagged[0]


def test_every_image_is_a_real_png_in_the_folder(demo):
    _, out, _, text = demo
    imgs = parse(text).imgs
    assert len(imgs) == 8  # four plots per device
    assert len(set(imgs)) == len(imgs)
    for src in imgs:
        assert "/" not in src and ":" not in src, src  # relative, same folder
        f = out / src
        assert f.is_file() and f.stat().st_size > 0, src
        assert f.read_bytes()[:8] == PNG_MAGIC, src
    assert sorted(p.name for p in out.glob("*.png")) == sorted(imgs)


def test_bundle_links_point_from_the_report_folder_to_the_run_folder(demo, tmp_path):
    data, _, _, text = demo
    hrefs = parse(text).hrefs
    assert "../bundles/local-litert-0.08ms/" in hrefs
    assert "../bundles/hexagon-dsp-0.12ms/" in hrefs
    data = {**data, "bundle_href_prefix": "../../runs/r1/"}
    data["devices"][0]["models"][1]["bundle"] = None
    custom = parse((write_report(tmp_path, data)).read_text(encoding="utf-8")).hrefs
    assert "../../runs/r1/bundles/local-litert-0.08ms/" in custom
    assert not any("local-litert-0.12ms" in h for h in custom)


def test_operator_table_shows_widths_and_family_colors(demo):
    data, _, _, text = demo
    m = data["devices"][0]["models"][0]
    assert f"{m['ops'][1]}@0.5" in text and f"{m['ops'][3]}@0.75" in text
    assert "@1<" not in text and "@1.0" not in text
    assert re.search(r'<td style="background:#a6cee3">mb_k\d_e\d', text)  # mb family color
    assert "local-litert @ 0.08 ms" in text and "hexagon-dsp @ 0.12 ms" in text
    assert "14×14" in text


def test_predictor_caption_has_the_mape_of_the_points(demo):
    data, _, _, text = demo
    pts = data["devices"][0]["scatter"]
    want = mape([(p["predicted_ms"], p["measured_ms"]) for p in pts])
    assert f"MAPE {want:.1f}% over {len(pts)} architectures" in text


def test_text_from_data_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    dev = make_device(evil, 3)
    dev["models"][0]["arch"] = "mb_k3_e3-" + evil
    data = make_data([dev])
    data["title"] = evil
    data["provenance"]["note"] = evil
    text = write_report(tmp_path, data).read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    p = parse(text)
    assert len(p.imgs) == 4
    for src in p.imgs:
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.png", src) and (tmp_path / src).is_file()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"title": None, "devices": None, "provenance": None, "space": None},
        make_data([]),
        make_data([{"name": "bare"}]),
        make_data(
            [
                {
                    "name": "holes",
                    "lut": {"ops": ["skip"], "layers": [0], "ms": [[None]]},
                    "reduced_ops": None,
                    "history": [],
                    "scatter": [],
                    "models": [
                        {
                            "budget_ms": None,
                            "arch": None,
                            "ops": None,
                            "widths": None,
                            "predicted_ms": None,
                            "measured_ms": None,
                            "test_acc": None,
                            "val_acc": None,
                            "accepted": None,
                            "bundle": None,
                        }
                    ],
                }
            ]
        ),
    ],
    ids=["empty", "all-none", "no-devices", "bare-device", "all-optional-none"],
)
def test_sparse_data_still_renders_and_says_not_available(tmp_path, data):
    text = write_report(tmp_path / "report", data).read_text(encoding="utf-8")
    p = parse(text)
    assert p.h2 == HEADINGS
    assert p.imgs == [] and not list((tmp_path / "report").glob("*.png"))
    for key in ("ops", "pareto", "lut", "predictor", "history"):
        assert "not available" in section(text, key), key
    has_models = any(d.get("models") for d in data.get("devices") or [])
    assert ("not available" in section(text, "summary")) != has_models
    assert "NOT ACCEPTED" not in text


def test_partial_device_plots_what_it_has(tmp_path):
    dev = make_device("partial", 4)
    dev["lut"] = None
    dev["scatter"] = []
    dev["models"][0].pop("val_acc")  # falls back to its fitness in the history
    text = write_report(tmp_path, make_data([dev])).read_text(encoding="utf-8")
    imgs = parse(text).imgs
    assert sorted(s.split("_")[0] for s in imgs) == ["history", "pareto"]
    assert "Latency lookup table not available" in text
    assert "Predicted-vs-measured latency not available" in text


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    pts = [
        (1.0, 0.5),
        (2.0, 0.6),
        (2.0, 0.55),
        (3.0, 0.6),
        (0.5, 0.4),
        (4.0, 0.9),
        (1.0, 0.5),
        (1.5, 0.45),
        (5.0, 0.85),
        (float("nan"), 1.0),
    ]
    assert pareto_front(pts) == [(0.5, 0.4), (1.0, 0.5), (2.0, 0.6), (4.0, 0.9)]
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 0.2)]) == [(3.0, 0.2)]


def test_history_numbers_generations_across_stages():
    hist = [
        {
            "stage": "A",
            "generation": 1,
            "population": [{"arch": "a", "fitness": 0.5}, {"arch": "b", "fitness": 0.7}],
        },
        {"stage": "A", "generation": 0, "population": [{"arch": "a", "fitness": 0.3}]},
        {
            "stage": "B",
            "generation": 0,
            "population": [{"arch": "c", "fitness": 0.9}, {"arch": "a", "fitness": None}],
        },
    ]
    s = history_series(hist)
    assert s.x == [0, 1, 2]
    assert s.best == [0.3, 0.7, 0.9]
    assert s.mean == pytest.approx([0.3, 0.6, 0.9])
    assert [(st.name, st.start, st.end, st.evaluated) for st in s.stages] == [
        ("A", 0, 1, 3),
        ("B", 2, 2, 2),
    ]
    assert s.evaluated == 5 and s.distinct == 3


def test_mape():
    assert mape([(1.1, 1.0), (0.9, 1.0)]) == pytest.approx(10.0)
    assert mape([(1.0, 0.0)]) is None and mape([]) is None
