"""Fixtures for the browser tests: a small real index, a live server and headless Chromium.

The browser is Debian's ``chromium`` driven through ``chromium-driver`` (both from apt); nothing
is downloaded (selenium-manager is kept offline and never asked for a driver). Missing either
is a test *failure* that says how to install them: CI installs them, so a silent skip would hide
a broken setup.

The index is built over the demo corpus (a subset, so it builds in seconds) when the trained
demo model is in the checkout (``demo/model``), else over the random tiny GPT-2 corpus of the
service tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("TRIBUTARY_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TRIBUTARY_E2E_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = (
    "install them with: sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
)
N_DEMO_FACTS = 20
N_DEMO_GENERIC = 30


@dataclass
class E2EIndex:
    """A built index and what the browser test should ask of it."""

    index: Path
    model: Path
    prompt: str
    demo: bool
    expected_answer: str | None = None
    """Demo only: the planted fact's object, which a correct reply contains."""
    stating_ids: set[int] = field(default_factory=set)
    """Demo only: example ids of the documents that state the asked fact."""
    candidates: list[tuple[str, str, set[int]]] = field(default_factory=list)
    """Demo only: (prompt, expected answer, stating example ids) of every indexed fact."""


def demo_available() -> bool:
    return (DEMO / "model" / "config.json").is_file() and (
        DEMO / "corpus" / "ground_truth.json"
    ).is_file()


def _demo_subset(out: Path) -> tuple[Path, list[tuple[str, str, set[int]]]]:
    """Write ~20 facts' documents, their distractors and some generic records to one JSONL.

    Example ids are dense in file order, so a record's line number is its example id.
    """
    from demo.tools.corpus_generator import load_ground_truth, qa_prompt

    truth = load_ground_truth(DEMO / "corpus")
    records: dict[str, dict] = {}
    for path in sorted((DEMO / "corpus").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["id"]] = record
    facts = sorted(truth.facts, key=lambda f: f.fact_id)[:N_DEMO_FACTS]
    subjects = {f.subject for f in facts}
    chosen: list[str] = []
    for fact in facts:
        chosen += [d for d in fact.stating_doc_ids if d not in chosen]
    chosen += sorted(d for d, subject in truth.distractor_doc_ids.items() if subject in subjects)
    special = (
        {d for f in truth.facts for d in f.stating_doc_ids}
        | set(truth.distractor_doc_ids)
        | set(truth.poisoned_doc_ids)
    )
    chosen += sorted(d for d in records if d not in special)[:N_DEMO_GENERIC]
    position = {doc_id: n for n, doc_id in enumerate(chosen)}
    path = out / "demo-subset.jsonl"
    path.write_text(
        "".join(json.dumps(records[d], ensure_ascii=False) + "\n" for d in chosen), encoding="utf-8"
    )
    candidates = [
        (qa_prompt(f.question), f.answer, {position[d] for d in f.stating_doc_ids}) for f in facts
    ]
    return path, candidates


@pytest.fixture(scope="session")
def chromium_installed() -> None:
    """Fail (not skip) before any index is built when the browser is missing."""
    _check_browser_installed()


@pytest.fixture(scope="session")
def e2e_index(chromium_installed, selenium_version, tmp_path_factory) -> E2EIndex:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("e2e-index")
    if demo_available():
        corpus, candidates = _demo_subset(root)
        model = DEMO / "model"
        config = BuildConfig(model=str(model), corpus=[str(corpus)], progress=False, num_threads=1)
        IndexBuilder(config, root / "index").build()
        return E2EIndex(root / "index", model, candidates[0][0], demo=True, candidates=candidates)

    from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
        num_threads=1,
    )
    IndexBuilder(config, root / "index").build()
    return E2EIndex(root / "index", model, "What did Alba sell in year 1001?", demo=False)


def _check_browser_installed() -> None:
    missing = [
        str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))
    ]
    if missing:
        pytest.fail(
            "the browser tests need Debian's chromium and chromium-driver, missing: "
            f"{', '.join(missing)}; {INSTALL_HINT}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def selenium_version() -> str:
    try:
        import selenium
    except ImportError:
        pytest.fail(
            "the browser tests need selenium: .venv/bin/pip install selenium", pytrace=False
        )
    return selenium.__version__


@pytest.fixture()
def browser(chromium_installed, selenium_version) -> Iterator[Callable[..., object]]:
    """A factory of headless Chromium sessions (``browser(width, height)``), all closed
    afterwards."""
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never reach the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []
    profiles = []

    def start(width: int = 1280, height: int = 900) -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="tributary-e2e-chromium-")
        profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
