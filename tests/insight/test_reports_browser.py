"""The HTML reports open in headless Chromium (Debian's /usr/bin/chromium through Playwright)
with every chart rendered, no console error and no network request: they work offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jevons.insight.margin import build_margin_report
from jevons.insight.margin_render import write_margin_html
from jevons.insight.stress import resolve_scenario, run_stress
from jevons.insight.stress_report import write_stress_report
from jevons.prices.loader import default_book

from .test_margin import BASE, MAR, ev, heavy_month, policy_with

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def open_report(browser: Any, path: Path) -> dict[str, Any]:
    page = browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('.chart')];"
        " return c.length > 0 && c.every(d => d.querySelector('svg.main-svg')); }",
        timeout=30_000,
    )
    info = page.evaluate(
        "() => { const c = [...document.querySelectorAll('.chart')];"
        " return {charts: c.length, drawn: c.filter(d => d._fullData && d._fullData.length).length,"
        " traces: c.map(d => (d._fullData || []).length), plotly: typeof Plotly}; }"
    )
    page.close()
    info["errors"] = errors
    info["remote"] = [u for u in requests if not u.startswith("file:")]
    return info


def test_stress_report_renders_offline(browser: Any, tmp_path: Path) -> None:
    scenario = resolve_scenario(preset="agentic-saas").with_changes(**{"customers.count": 3000})
    run = run_stress(scenario, book=default_book())
    path = write_stress_report(run, tmp_path / "stress.html")
    html = path.read_text()
    assert "<script src=" not in html and "<link " not in html  # nothing loaded from elsewhere
    info = open_report(browser, path)
    assert info["plotly"] == "object"
    # comparison, margin over time, one margin-vs-usage and one tornado per policy, drivers
    assert info["charts"] == 2 + 2 * len(run.policies) + 1
    assert info["drawn"] == info["charts"] and all(n > 0 for n in info["traces"])
    assert info["errors"] == [] and info["remote"] == []


def test_margin_report_renders_offline(browser: Any, tmp_path: Path) -> None:
    events = [ev("light", BASE, __import__("jevons").Usage(input_tokens=2000, output_tokens=300), when=MAR)]
    events += heavy_month("heavy", MAR, 60)
    report = build_margin_report(
        events, policy_with("builtin:flat", {"light": "starter", "heavy": "starter"})
    )
    assert report.flagged
    info = open_report(browser, write_margin_html(report, tmp_path / "margin.html"))
    assert info["charts"] == 3 and info["drawn"] == 3
    assert info["errors"] == [] and info["remote"] == []
