"""The chat page's second highlight, in a real headless Chromium: verbatim spans beside the
heat-map.

The reply keeps its influence heat-map (backgrounds) and gains an underline on the words the
listed documents hold verbatim; each document says whether it holds the reply word for word or
shares no wording with it, underlines the shared span in its own text, and the list can be
ordered by verbatim overlap. Everything on screen is checked against the API's own answer.
The screenshot goes to ``tests/e2e/artifacts/`` (and to ``docs/images/chat-page-verbatim.png``
with ``TRIBUTARY_E2E_UPDATE_DOCS=1``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, E2EIndex
from tests.e2e.test_chat_page import (
    alerts,
    assert_no_alerts,
    docs,
    screenshot,
    wait_for,
    wait_for_docs,
)
from tests.service.live_server import live_server

pytestmark = pytest.mark.slow
DOCS_IMAGE = ROOT / "docs" / "images" / "chat-page-verbatim.png"

VERB_JS = """
return {
  reply: [...document.querySelectorAll('#reply .tok')].map((t) => ({
           text: t.textContent, verb: t.classList.contains('verb'),
           bg: getComputedStyle(t).backgroundColor, deco: getComputedStyle(t).textDecorationLine})),
  badges: [...document.querySelectorAll('#doc-lists .doc')].map((li) => {
    const b = li.querySelector('.verb-badge');
    return {id: Number(li.dataset.exampleId), cls: b.className, text: b.textContent};
  }),
  vspans: [...document.querySelectorAll('#doc-lists .doc')].map((li) =>
           [...li.querySelectorAll('.doc-text mark.vspan')].map((m) => m.textContent).join('')),
};
"""


def test_verbatim_spans_beside_the_heat_map(
    e2e_index: E2EIndex, browser, artifacts: Path, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with live_server(
        e2e_index.index, e2e_index.model, tmp_path / "state", "--enable-generate"
    ) as base:
        driver = browser(1280, 1000)
        driver.get(base + "/")
        wait_for(
            driver,
            lambda d: "training documents" in d.find_element(By.ID, "index-info").text or alerts(d),
            "the index summary never loaded",
        )
        box = driver.find_element(By.ID, "prompt")
        lines = e2e_index.prompt.split("\n")
        for n, line in enumerate(lines):  # Enter sends; Shift+Enter is a new line
            box.send_keys(line)
            if n < len(lines) - 1:
                box.send_keys(Keys.SHIFT, Keys.ENTER)
        box.send_keys(Keys.ENTER)
        show = driver.find_element(By.ID, "show-sources")
        wait_for(
            driver,
            lambda d: show.is_displayed() and show.is_enabled() or alerts(d),
            "the model never answered",
        )
        assert_no_alerts(driver)
        response = driver.execute_script("return document.getElementById('reply').textContent")
        show.click()
        listed = wait_for_docs(driver)
        api = httpx.post(
            base + "/v1/attributions",
            timeout=120,
            json={
                "prompt": e2e_index.prompt,
                "response": response,
                "top_k": 10,
                "direction": "helpful",
                "token_wise": True,
                "evidence": True,
            },
        ).json()
        assert [d["id"] for d in listed] == [e["example_id"] for e in api["examples"]]
        seen = driver.execute_script(VERB_JS)

        # 1. the reply: underlined exactly where some listed document shares a span, heat-map kept
        ranges = [
            (s["start"], s["end"]) for e in api["examples"] for s in e["verbatim"]["response_spans"]
        ]
        assert ranges, "no listed document shares any wording with the reply"
        cursor, expected = 0, []
        for tok in seen["reply"]:
            start = response.index(tok["text"], cursor)
            cursor = start + len(tok["text"])
            expected.append(any(start < b and a < cursor for a, b in ranges))
        assert [t["verb"] for t in seen["reply"]] == expected
        assert all("underline" in t["deco"] for t in seen["reply"] if t["verb"])
        assert any(
            not t["bg"].endswith(", 0)") and "rgba(0, 0, 0, 0)" not in t["bg"]
            for t in seen["reply"]
        )  # the heat-map

        # 2. every document: a badge that tells copying from teaching, and its shared span
        #    underlined
        for ex, badge, vspan in zip(api["examples"], seen["badges"], seen["vspans"]):
            share = ex["verbatim"]["response_coverage"]
            if share > 0:
                assert (
                    "copied" in badge["cls"] and badge["text"] == f"verbatim {round(100 * share)}%"
                )
                first = ex["verbatim"]["response_spans"][0]
                if first["example_end"] <= len(ex["text"]):
                    assert response[first["start"] : first["end"]] in vspan
            else:
                assert (
                    "none" in badge["cls"] and badge["text"] == "no shared wording" and vspan == ""
                )
        assert driver.find_elements(By.CSS_SELECTOR, "#doc-lists mark.ttok"), (
            "training-token heat-map missing"
        )

        # 3. pointing at a document shows only its own spans in the reply
        target = next(i for i, e in enumerate(api["examples"]) if e["verbatim"]["response_spans"])
        ActionChains(driver).move_to_element(
            driver.find_elements(By.CSS_SELECTOR, "#doc-lists .doc")[target]
        ).perform()
        own = [
            (s["start"], s["end"]) for s in api["examples"][target]["verbatim"]["response_spans"]
        ]
        hovered = driver.execute_script(VERB_JS)["reply"]
        cursor, expected = 0, []
        for tok in hovered:
            start = response.index(tok["text"], cursor)
            cursor = start + len(tok["text"])
            expected.append(any(start < b and a < cursor for a, b in own))
        assert [t["verb"] for t in hovered] == expected
        image = screenshot(driver, artifacts / "chat-page-verbatim.png")
        if os.environ.get("TRIBUTARY_E2E_UPDATE_DOCS") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, DOCS_IMAGE)

        # 4. ordered by verbatim overlap on request
        driver.find_element(By.CSS_SELECTOR, "label[for='sort-verbatim']").click()
        reordered = docs(driver)
        shares = {e["example_id"]: e["verbatim"]["response_coverage"] for e in api["examples"]}
        assert [shares[d["id"]] for d in reordered] == sorted(shares.values(), reverse=True)
        assert "verbatim overlap" in driver.find_element(By.ID, "sources-summary").text
        assert_no_alerts(driver)
