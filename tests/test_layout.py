"""The test tree's layout: pytest's default import mode imports every test module by its
basename, so two plugins' ``test_options.py`` would stop the whole suite at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_test_module_names_are_unique_across_the_suite():
    modules = [p for p in ROOT.glob("**/test_*.py") if ".venv" not in p.parts and "site-packages" not in p.parts]
    twice = sorted(name for name, count in Counter(p.name for p in modules).items() if count > 1)
    assert twice == [], f"rename these test modules (prefix the plugin's name): {twice}"
