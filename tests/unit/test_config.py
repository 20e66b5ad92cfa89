"""Config loading: defaults, flags, and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from logdist.config import ConfigError, load, parse_analyzer_flag


def test_analyzer_flag_parses_name_address_weight() -> None:
    analyzer = parse_analyzer_flag("a1=127.0.0.1:9000@0.4")
    assert (analyzer.name, analyzer.address, analyzer.weight) == ("a1", "127.0.0.1:9000", 0.4)
    assert parse_analyzer_flag("b=host:1").weight == 1.0


@pytest.mark.parametrize("text", ["nonsense", "=h:1@1", "a=h:1@heavy"])
def test_bad_analyzer_flag_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--analyzer"):
        parse_analyzer_flag(text)


def test_toml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "logdist.toml"
    path.write_text(
        'listen = "127.0.0.1:0"\n'
        '[[analyzers]]\nname = "a"\naddress = "127.0.0.1:9001"\nweight = 3\n'
        "[delivery]\nlinger_ms = 1.5\n"
    )
    config = load(path)
    assert config.analyzers[0].weight == 3
    assert config.delivery.linger_ms == 1.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("listen = 5\n", "listen"),
        ('[[analyzers]]\nname = "a"\naddress = "nowhere"\n', "analyzers\\[0\\].address"),
        ('[[analyzers]]\nname = "a"\naddress = "h:1"\nweight = -1\n', "analyzers\\[0\\].weight"),
        ("[delivery]\nlinger = 3\n", "linger"),
        ("listen = \n", "invalid TOML"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_annotated_example_config_loads_with_the_documented_defaults() -> None:
    from logdist.config import Config

    example = load(Path(__file__).parents[2] / "examples" / "logdist.toml")
    defaults = Config()
    assert [a.weight for a in example.analyzers] == [4, 3, 2, 1]
    assert example.delivery == defaults.delivery
    assert example.limits == defaults.limits
