"""Docs stay current: every topic and service of the wire contract appears in docs/architecture.md."""

from pathlib import Path

from irevla_ros import interfaces as itf

REPO = Path(__file__).resolve().parent.parent


def test_every_endpoint_is_documented():
    text = (REPO / "docs" / "architecture.md").read_text()
    endpoints = [v for v in vars(itf).values() if isinstance(v, itf.Endpoint)]
    assert len(endpoints) > 20
    missing = [e.name for e in endpoints if f"`{e.name}`" not in text and e.name not in text]
    assert not missing, f"add these to docs/architecture.md: {missing}"


def test_readme_opens_with_the_two_commands():
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.strip()]
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("make sim") and block[1].startswith("make test")
    assert "make test" in (REPO / ".ci" / "run").read_text()
