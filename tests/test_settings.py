import pytest

from lake.errors import ConfigError
from lake.settings import load_settings


def test_precedence_defaults_file_env_flags(tmp_path) -> None:
    cfg = tmp_path / "lake.toml"
    cfg.write_text('root = "/from/file"\nmax_concurrency = 8\n[endpoints]\num_rest_url = "http://file:1"\n')
    assert load_settings(env={}).root == "./lake-data"
    s = load_settings(cfg, env={})
    assert (s.root, s.max_concurrency, s.endpoints.rest["um"]) == ("/from/file", 8, "http://file:1")
    s = load_settings(cfg, env={"LAKE_ROOT": "/from/env", "LAKE_MAX_CONCURRENCY": "4"})
    assert (s.root, s.max_concurrency) == ("/from/env", 4)
    s = load_settings(cfg, env={"LAKE_ROOT": "/from/env"}, root="/from/flag", max_concurrency=None)
    assert (s.root, s.max_concurrency) == ("/from/flag", 8)


def test_endpoint_resolution_general_to_specific() -> None:
    s = load_settings(env={"LAKE_SIM_URL": "http://127.0.0.1:9000", "LAKE_SPOT_REST_URL": "http://spot:1"})
    ep = s.endpoints
    assert ep.rest["um"] == "http://127.0.0.1:9000" and ep.rest["spot"] == "http://spot:1"
    assert ep.ws["um"] == "ws://127.0.0.1:9000/ws-um/market"
    assert ep.archive == "http://127.0.0.1:9000/archive"
    assert load_settings(env={}).endpoints.rest["cm"] == "https://dapi.binance.com"


def test_secrets_are_not_in_repr() -> None:
    s = load_settings(env={"LAKE_QUANTCLASS_API_KEY": "sekret-key", "LAKE_WEBHOOK_SECRET": "SECabc"})
    assert s.quantclass_api_key == "sekret-key"
    assert "sekret" not in repr(s) and "SECabc" not in repr(s)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("root = [", "not valid TOML"),
        ("max_concurrency = 'many'", "expected int"),
        ("webhook_kind = 'x'", "json"),
        ("[a]\nroot = 'x'\n[b]\nroot = 'y'", "appears twice"),  # across tables too
        ("http_timeout = 0", "expected seconds > 0"),
        ("http_timeout = nan", "expected seconds > 0"),
        ("max_concurrency = 0", "expected an int >= 1"),
        ("sim_url = 'localhost:8765'", "URL"),
        ("root = [1, 2]", "setting 'root' in .*expected str"),  # it made a directory named '[1, 2]'
        ("root = true", "expected str"),
    ],
)
def test_bad_config(tmp_path, text: str, match: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_unreadable_config_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path, env={})  # a directory
    binary = tmp_path / "lake.toml"
    binary.write_bytes(b"\xff\xfe root = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(binary, env={})


def test_bad_env_values_are_config_errors() -> None:
    for env in (
        {"LAKE_HTTP_TIMEOUT": "-1"},
        {"LAKE_MAX_CONCURRENCY": "-3"},
        {"LAKE_REST_URL": "fapi.binance.com"},
    ):
        with pytest.raises(ConfigError, match="in environment"):
            load_settings(env=env)
    assert load_settings(env={"LAKE_WS_URL": "wss://fstream.binance.com/market"}).ws_url.startswith("wss://")


def test_lakes_with_different_roots_share_one_weight_budget_per_exchange(tmp_path, monkeypatch) -> None:
    """Binance counts weight per IP: two lakes backfilled at once from one machine must share one
    budget file (with the default <root>/.state each had its own: 5×429 and a ban, found by the
    budget review). A simulator on this machine keeps the lake's own state dir; state_dir wins."""
    from lake.ingest.rest_client import RestClient
    from lake.settings import Settings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = tmp_path / "cache" / "lake" / "state"
    a, b = Settings(root=str(tmp_path / "a")), Settings(root=str(tmp_path / "b"))
    files = [RestClient.from_settings(s, "um").governor.state_file for s in (a, b)]
    assert files[0] == files[1] and files[0] is not None and files[0].parent == shared
    assert files[0].name.startswith("budget-um-")
    assert a.budget_dir("wss://stream.binance.com:9443") == shared
    sim = Settings(root=str(tmp_path / "a"), sim_url="http://127.0.0.1:8765")
    assert RestClient.from_settings(sim, "um").governor.state_file.parent == tmp_path / "a" / ".state"  # type: ignore[union-attr]
    mine = Settings(root=str(tmp_path / "a"), state_dir=str(tmp_path / "mine"))
    assert RestClient.from_settings(mine, "spot").governor.state_file.parent == tmp_path / "mine"  # type: ignore[union-attr]
