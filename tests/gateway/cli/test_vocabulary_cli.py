"""`coopgate vocabulary`: the categories and purposes a user may name, with their meaning."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.consent.vocabulary import Vocabulary


def test_vocabulary_lists_every_category_and_purpose_with_its_description() -> None:
    known = Vocabulary.load()
    result = CliRunner().invoke(app, ["vocabulary"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name, description in known.categories.items():
        assert name in result.stdout
        assert description in result.stdout
    for purpose in known.purposes.values():
        assert purpose.name in result.stdout
        assert purpose.description in result.stdout
        assert purpose.dpv in result.stdout


def test_vocabulary_as_json() -> None:
    result = CliRunner().invoke(app, ["vocabulary", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    known = Vocabulary.load()
    assert listed["categories"] == known.categories
    assert listed["purposes"]["marketing"]["separate"] is True
    assert set(listed["purposes"]) == set(known.purposes)
