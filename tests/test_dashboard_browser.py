"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Three in-process nodes with SIMULATED engines on 127.0.0.1 (see
test_dashboard); the page is served by the first. Screenshots are saved in
``bench-results/screenshots/`` (git-ignored). ``DELLM_DOCS_SCREENSHOT=1``
runs one more test, which writes the README's ``docs/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed (the test extra)")
async_playwright, expect = playwright.async_playwright, playwright.expect

from .test_dashboard import QUESTION, dashboard_of, start_swarm  # noqa: E402
from .test_http_api import REPLIES, serve  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "bench-results" / "screenshots"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> Answer: <b>bold</b>'

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (scripts/setup.sh installs it as root)"
)


@pytest.fixture
async def browser():
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser, url: str, *, viewport=LAPTOP, scheme="light"):
    """A new page at ``url``; page errors collect in ``page.errors`` (the tests expect none)."""
    context = await browser.new_context(viewport=viewport, color_scheme=scheme)
    page = await context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    await page.goto(url)
    return page


async def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def test_the_page_shows_the_swarm_asks_it_and_sees_nodes_go(browser, tmp_path, monkeypatch):
    # Under heartbeat gossip the dashboard's node declares a silent peer suspect after 1 s and dead after 2.5 s
    # (3 s and 8 s by default); SWIM's probes take a few seconds with 3 nodes.
    nodes = await start_swarm(tmp_path, monkeypatch, suspect_after_s=1.0, dead_after_s=2.5)
    try:
        await see_the_swarm(browser, monkeypatch, *nodes)
    finally:
        for node in reversed(nodes):
            await node.close(0)


async def see_the_swarm(browser, monkeypatch, gw, b, c) -> None:
    page = await open_page(browser, gw.http_url + "/")
    rows = page.locator("#peers tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert sorted(await page.locator("#peers .peer-name").all_text_contents()) == ["b", "c", "gw"]
    for node in (gw, b, c):
        await expect(page.locator(f'tr[data-node-id="{node.node_id}"]')).to_have_attribute("data-state", "alive")
    await expect(page.locator("#legend li")).to_have_count(3)

    # Ask in the ask box: the answer streams in, the chunks show their votes, the question is listed.
    await page.fill("#question", QUESTION)
    await page.click("#ask-btn")
    await expect(page.locator("#answer")).to_have_text(REPLIES["Question:"], timeout=20_000)
    await expect(page.locator("#live-chunks li")).to_have_count(2)
    await expect(page.locator('#live-chunks li[data-state="voted"]')).to_have_count(2)
    await expect(page.locator("#live-chunks li").first).to_contain_text("voted 100")
    await expect(page.locator("#answer-meta")).to_contain_text("agreement")
    question = page.locator("details.question")
    await expect(question).to_have_count(1)
    await expect(question).to_have_attribute("data-status", "answered")
    await question.locator("summary").click()
    math = question.locator('section.chunk[data-chunk="c1"]')
    await expect(math.locator(".vote")).to_contain_text("majority")
    await expect(math.locator(".vote")).to_contain_text("agreement 100 %")
    await expect(math.locator("tr.winner")).to_have_count(1)
    await expect(math.locator(".rewards")).to_contain_text("+")
    # Rewards reached the chart as markers.
    await expect(page.locator("#chart circle.mark").first).to_be_visible()
    await shot(page, "dashboard-laptop-light")

    # The same page on a phone, in the dark: nothing wider than the screen (tables scroll in their cards).
    phone = await open_page(browser, gw.http_url + "/", viewport=PHONE, scheme="dark")
    await expect(phone.locator("#peers tbody tr")).to_have_count(3)
    await expect(phone.locator("details.question")).to_have_count(1)
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert await phone.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 18, 23)"
    await shot(phone, "dashboard-phone-dark")
    assert phone.errors == []
    await phone.context.close()

    # Kill c (no goodbye: it just stops answering): its row turns suspect, then dead.
    monkeypatch.setattr(c.membership, "say_goodbye", no_goodbye)
    await c.close(0)
    row = page.locator(f'tr[data-node-id="{c.node_id}"]')
    await expect(row).to_have_attribute("data-state", re.compile("suspect|dead"), timeout=10_000)
    await expect(row).to_have_attribute("data-state", "dead", timeout=10_000)
    await expect(row.locator(".state")).to_contain_text(re.compile(r"dead \d+ s"))
    # b stops cleanly: it says goodbye, and its row turns left at once.
    await b.close(0)
    await expect(page.locator(f'tr[data-node-id="{b.node_id}"]')).to_have_attribute("data-state", "left")
    await expect(page.locator("#peer-count")).to_have_text("1 alive of 3")
    await shot(page, "dashboard-nodes-gone")
    assert page.errors == []

    # A closed tab costs the node nothing: its stream ends.
    await page.context.close()
    async with asyncio.timeout(5):
        while dashboard_of(gw).streams:
            await asyncio.sleep(0.05)
    assert dashboard_of(gw)._ticker is None


async def no_goodbye() -> None:
    """A membership's goodbye that says nothing: the node vanishes as if it crashed."""


async def test_model_output_is_shown_as_text_never_as_html(browser, tmp_path, monkeypatch):
    nodes = await start_swarm(tmp_path, monkeypatch, names=("gw",))
    try:
        nodes[0].engine.replies = {"html": EVIL}
        page = await open_page(browser, nodes[0].http_url + "/")
        await expect(page.locator("#peers tbody tr")).to_have_count(1)
        await page.fill("#question", "Show me some html please")
        await page.click("#ask-btn")
        await expect(page.locator("#answer")).to_contain_text("<script>", timeout=20_000)
        await expect(page.locator("#answer")).to_contain_text("<b>bold</b>")
        question = page.locator("details.question")
        await expect(question).to_have_attribute("data-status", "answered")
        await question.locator("summary").click()
        await expect(question.locator(".q-body > .answer")).to_contain_text("<script>window.__pwned = 1</script>")
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("#main script, #main img, #main b").count() == 0
        await shot(page, "dashboard-script-as-text")
        assert page.errors == []
    finally:
        for node in reversed(nodes):
            await node.close(0)


async def test_with_a_key_the_page_asks_for_it_once_and_keeps_it_out_of_urls(browser, tmp_path, monkeypatch):
    (gw,) = await start_swarm(tmp_path, monkeypatch, names=("gw",))
    async with serve(gw, api_key="s3cret-key") as url:
        page = await open_page(browser, url + "/")
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await expect(page.locator("#keyform")).to_be_visible()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "locked")
        await expect(page.get_by_text(re.compile("needs its API key"))).to_have_count(1)  # one prompt, not two
        await page.fill("#key", "wrong")
        await page.click("#keyform button")
        await expect(page.locator("#key-msg")).to_contain_text("refused")
        await page.fill("#key", "s3cret-key")
        await page.click("#keyform button")
        await expect(page.locator("#peers tbody tr")).to_have_count(1)
        await expect(page.locator("#keyform")).to_be_hidden()
        # No question yet: the fitness chart is empty, and none of its labels run into another.
        await expect(page.locator("#chart text.empty")).to_have_count(1)
        # Read every label's box in one page turn: the chart re-renders on each tick, and a label read one by
        # one can be replaced (detached, no box) between two reads.
        boxes = await page.eval_on_selector_all(
            "#chart text",
            "els => els.map((e) => e.getBoundingClientRect())"
            ".map((r) => ({ x: r.x, y: r.y, width: r.width, height: r.height }))",
        )
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                assert apart or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"], (a, b)
        # Kept for the session: a reload connects without asking.
        await page.reload()
        await expect(page.locator("#peers tbody tr")).to_have_count(1)
        await expect(page.locator("#keyform")).to_be_hidden()
        assert await page.evaluate("sessionStorage.getItem('dellm-api-key')") == "s3cret-key"
        assert not any("s3cret" in u for u in urls)
        assert page.errors == []
        await page.context.close()
    await gw.close(0)


@pytest.mark.skipif(
    not os.environ.get("DELLM_DOCS_SCREENSHOT"), reason="DELLM_DOCS_SCREENSHOT=1 makes the README's PNG"
)
async def test_readme_screenshot(browser, tmp_path, monkeypatch):
    """docs/dashboard.png: a swarm that has answered a few questions, some peers now and then wrong."""
    import httpx

    nodes = await start_swarm(tmp_path, monkeypatch, names=("desk", "laptop", "mini-pc"))
    desk, laptop, mini = nodes
    try:
        # Sampled answers differ now and then, so votes are split and the fitness lines part.
        laptop.engine.sampled_replies = {
            "capital": "The capital of France is Lyon.|The capital of France is Paris.",
            "Calculate": "10% of 1000 is 10. Answer: 10|10% of 1000 is 100. Answer: 100",
        }
        mini.engine.sampled_replies = {"river": "The Loire flows through Paris.|The Seine flows through Paris."}
        page = await open_page(browser, desk.http_url + "/", viewport={"width": 1280, "height": 1040})
        await expect(page.locator("#peers tbody tr")).to_have_count(3)
        questions = [
            "What is the capital of France?",
            "Which river flows through Paris?",
            QUESTION,
            "What is the capital of France?",
            "Which river flows through Paris?",
        ]
        async with httpx.AsyncClient(base_url=desk.http_url, timeout=30) as http:
            for q in questions:
                reply = await http.post(
                    "/v1/chat/completions", json={"model": "dellm", "messages": [{"role": "user", "content": q}]}
                )
                assert reply.status_code == 200
                await asyncio.sleep(1.0)
        await page.fill("#question", QUESTION)
        await page.click("#ask-btn")
        await expect(page.locator("#answer")).to_have_text(REPLIES["Question:"], timeout=20_000)
        await expect(page.locator("details.question")).to_have_count(len(questions) + 1)
        await page.locator("details.question summary").nth(2).click()  # the capital: a split vote
        await page.wait_for_timeout(600)
        await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=False)
        await shot(page, "readme")
        assert page.errors == []
    finally:
        for node in reversed(nodes):
            await node.close(0)
