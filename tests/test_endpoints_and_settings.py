"""Every URL lake contacts: real defaults, overridable by flag, config file and environment, with one
precedence (flag > env > config > default) that also holds between general and specific keys, used
by every command that contacts it, through a path-prefixed mirror or a forward proxy, and no secret in
any output. Real servers only: the simulator, and a recording reverse proxy / forward proxy in front
of it (``Mirror``) that notes every request it relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import polars as pl
import pytest
from aiohttp import web

from lake.cli import main
from lake.errors import ConfigError
from lake.settings import Settings, load_settings
from lake.sim.quantclass import add_quantclass_routes
from lake.sim.testing import start_sim
from lake.store.klines import write_klines

# -- a recording mirror --------------------------------------------------------------------------

_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "upgrade",
}


@dataclass
class Seen:
    method: str
    host: str  # the Host header (a forward proxy sees the origin asked for)
    path_qs: str
    headers: dict[str, str]
    websocket: bool = False


@dataclass
class Mirror:
    """A real HTTP + websocket reverse proxy: ``/<prefix>/rest`` → ``<upstream>/rest`` (longest prefix
    wins), recording each request. Also a forward proxy: an absolute-form request (``GET http://x/…``,
    as clients send to ``HTTP_PROXY``) is relayed the same way by its path."""

    routes: dict[str, str]
    seen: list[Seen] = field(default_factory=list)
    base_url: str = ""
    answer: Callable[[], web.Response] | None = None  # a canned answer instead of relaying

    def paths(self, websocket: bool | None = None) -> list[str]:
        return [s.path_qs for s in self.seen if websocket is None or s.websocket == websocket]

    def _target(self, path_qs: str) -> str:
        for prefix in sorted(self.routes, key=len, reverse=True):
            if (
                path_qs == prefix
                or path_qs.startswith(prefix.rstrip("/") + "/")
                or (path_qs.startswith(prefix + "?"))
            ):
                return self.routes[prefix].rstrip("/") + path_qs[len(prefix.rstrip("/")) :]
        raise web.HTTPBadGateway(text=f"no route for {path_qs}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        self.seen.append(
            Seen(request.method, request.host, request.rel_url.raw_path_qs, dict(request.headers), is_ws)
        )
        if self.answer is not None:
            return self.answer()
        target = self._target(request.rel_url.raw_path_qs)
        if is_ws:
            return await self._relay_ws(request, "ws" + target[len("http") :])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, target, headers=headers, allow_redirects=False) as resp,
        ):
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, body=body, headers=out)

    async def _relay_ws(self, request: web.Request, target: str) -> web.WebSocketResponse:
        down = web.WebSocketResponse()
        await down.prepare(request)
        async with aiohttp.ClientSession() as session, session.ws_connect(target) as up:

            async def pump(src, dst) -> None:  # type: ignore[no-untyped-def]
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break
                await dst.close()

            tasks = [asyncio.ensure_future(pump(up, down)), asyncio.ensure_future(pump(down, up))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        return down


@contextlib.contextmanager
def mirror(routes: dict[str, str], answer: Callable[[], web.Response] | None = None) -> Iterator[Mirror]:
    m = Mirror(routes, answer=answer)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, web.AppRunner] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", m.handle)
        runner = web.AppRunner(app, access_log=None)  # the server side logs what it got
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        m.base_url = f"http://127.0.0.1:{port}"
        holder["runner"] = runner
        ready.set()

    th = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    th.start()
    assert ready.wait(10)
    try:
        yield m
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        # the sockets cleanup() closed are released by callbacks it scheduled: let them run before
        # the loop stops (else a socket left open warns when collected, during some later test)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        loop.close()
        # The relay's accepted sockets can still sit in reference cycles: collected here, not as a
        # ResourceWarning (an error under filterwarnings) in whichever later test the GC runs in.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def cli(*args: str) -> tuple[int, str, str]:
    """``lake …`` in this process (so the test's environment applies): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with start_sim(extra_routes=add_quantclass_routes) as handle:
        yield handle


# -- defaults ------------------------------------------------------------------------------------


def test_defaults_are_the_production_urls() -> None:
    ep = load_settings(env={}).endpoints
    # ../shared/reference/binance.md §1, §4, §5 and quantclass.md
    assert dict(ep.rest) == {
        "spot": "https://api.binance.com",
        "um": "https://fapi.binance.com",
        "cm": "https://dapi.binance.com",
    }
    assert dict(ep.ws) == {
        "spot": "wss://stream.binance.com:9443",
        "um": "wss://fstream.binance.com/market",  # klines live on the /market route
        "cm": "wss://dstream.binance.com",
    }
    assert ep.archive == "https://data.binance.vision"
    assert ep.archive_list == "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
    assert ep.quantclass == "https://api.quantclass.cn"


# -- precedence ----------------------------------------------------------------------------------


def test_a_flag_beats_a_more_specific_key_from_a_lower_source(tmp_path: Path) -> None:
    # The README's own lake.toml example sets um_rest_url; `--sim-url` on the command line must then
    # still send every request to the simulator (it sent usdt_perp's to fapi.binance.com).
    cfg = tmp_path / "lake.toml"
    cfg.write_text(
        '[endpoints]\num_rest_url = "https://fapi.binance.com"\narchive_url = "https://mirror.example/dv"\n'
        'quantclass_url = "https://qc.example"\num_ws_url = "wss://fstream.binance.com/market"\n'
    )
    s = load_settings(cfg, env={}, sim_url="http://127.0.0.1:9")
    assert s.endpoints.rest["um"] == "http://127.0.0.1:9"
    assert s.endpoints.ws["um"] == "ws://127.0.0.1:9/ws-um/market"
    assert s.endpoints.archive == "http://127.0.0.1:9/archive"
    assert s.endpoints.quantclass == "http://127.0.0.1:9/quantclass"
    # env over config, across keys too
    s = load_settings(cfg, env={"LAKE_REST_URL": "http://env-rest:1"})
    assert s.endpoints.rest["um"] == "http://env-rest:1"
    # a flag over env, across keys
    s = load_settings(env={"LAKE_UM_REST_URL": "http://env-um:1"}, rest_url="http://flag:1")
    assert s.endpoints.rest == {"spot": "http://flag:1", "um": "http://flag:1", "cm": "http://flag:1"}
    # within one source the specific key still wins (documented: general to specific)
    s = load_settings(env={"LAKE_SIM_URL": "http://127.0.0.1:9", "LAKE_UM_REST_URL": "http://um:1"})
    assert (s.endpoints.rest["um"], s.endpoints.rest["spot"]) == ("http://um:1", "http://127.0.0.1:9")
    s = load_settings(env={}, sim_url="http://127.0.0.1:9", um_rest_url="http://um:1")
    assert s.endpoints.rest["um"] == "http://um:1"
    # and settings built directly (library users, tests) keep the general-to-specific order
    assert Settings(sim_url="http://s:1", um_rest_url="http://um:1").endpoints.rest["um"] == "http://um:1"


def test_backfill_sim_url_flag_is_not_overridden_by_the_config_file(tmp_path: Path, sim) -> None:  # type: ignore[no-untyped-def]
    with mirror({"/binance": sim.base_url}) as fapi:
        cfg = tmp_path / "lake.toml"
        cfg.write_text(f'[endpoints]\num_rest_url = "{fapi.base_url}/binance"\n')
        code, _out, err = cli(
            "backfill", "--type", "usdt_perp", "--symbols", "BTCUSDT", "--days", "1", "--source", "rest",
            "--root", str(tmp_path / "lake"), "--config", str(cfg), "--sim-url", sim.base_url, "--json",
        )  # fmt: skip
        assert code == 0, err
        assert fapi.paths() == [], "the config file's um_rest_url beat the --sim-url flag"


# -- flags: every endpoint, on every command that contacts it ----------------------------------

_REST = ["--rest-url", "--spot-rest-url", "--um-rest-url", "--cm-rest-url"]
_WS = ["--ws-url", "--spot-ws-url", "--um-ws-url", "--cm-ws-url"]


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("backfill", ["--sim-url", *_REST, "--archive-url", "--archive-list-url"]),
        ("live", ["--sim-url", *_REST, *_WS, "--webhook-url"]),
        ("audit", ["--sim-url", *_REST]),  # --repair fetches over REST
        ("compare", ["--sim-url", "--quantclass-url"]),
    ],
)
def test_every_endpoint_a_command_contacts_has_a_flag(command: str, flags: list[str]) -> None:
    code, out, err = cli(command, "--help")
    assert code == 0, err
    missing = [f for f in flags if f not in out]
    assert missing == [], f"lake {command} lacks {missing}"


# -- path prefixes, trailing slashes, and which command uses what -------------------------------


def test_backfill_through_a_path_prefixed_mirror_by_env(tmp_path: Path, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    routes = {
        "/binance": sim.base_url,
        "/dv": f"{sim.base_url}/archive",
        "/bucket": f"{sim.base_url}/archive-bucket",
    }
    with mirror(routes) as m:
        monkeypatch.setenv("LAKE_REST_URL", f"{m.base_url}/binance/")  # trailing slashes too
        monkeypatch.setenv("LAKE_ARCHIVE_URL", f"{m.base_url}/dv/")
        monkeypatch.setenv("LAKE_ARCHIVE_LIST_URL", f"{m.base_url}/bucket/")
        code, out, err = cli(
            "backfill", "--type", "usdt_perp", "--symbols", "BTCUSDT", "--start", "2025-03-10",
            "--end", "2025-03-15T06:00", "--source", "auto", "--root", str(tmp_path / "lake"), "--json",
        )  # fmt: skip
        assert code == 0, err
        paths = m.paths()
        assert any(p.startswith("/binance/fapi/v1/klines?") for p in paths)
        assert any(p.startswith("/binance/fapi/v1/exchangeInfo") for p in paths)
        assert any(p.startswith("/bucket?") and "prefix=data/futures/um/" in p for p in paths), paths
        assert any(p.startswith("/dv/data/futures/um/daily/klines/BTCUSDT/5m/") for p in paths), paths
        assert not any("//" in p for p in paths)
        rep = json.loads(out)
        assert rep["archive"][0]["rows"] > 0 and rep["rest"]["candles"] > 0


def test_audit_repair_uses_the_per_market_rest_flag(tmp_path: Path, sim) -> None:  # type: ignore[no-untyped-def]
    truth = sim.market.truth("usdt_perp", "5m", ["BTCUSDT"], "2025-03-10", "2025-03-11")
    kept = truth.filter(~pl.int_range(pl.len()).is_between(100, 106)).drop("symbol")
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", kept.with_columns(source=pl.lit("archive")))
    with mirror({"/fapi-mirror": sim.base_url}) as m:
        code, out, err = cli(
            "audit", "--repair", "--root", str(tmp_path), "--type", "usdt_perp", "--json",
            "--um-rest-url", f"{m.base_url}/fapi-mirror",
        )  # fmt: skip
        assert code == 0, err + out
        assert any(p.startswith("/fapi-mirror/fapi/v1/klines?") for p in m.paths())


def test_live_websocket_and_repair_through_a_prefixed_mirror(tmp_path: Path, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    routes = {"/rest": sim.base_url, "/fws": f"{sim.base_url}/ws-um"}
    with mirror(routes) as m:
        monkeypatch.setenv("LAKE_UM_REST_URL", f"{m.base_url}/rest")
        ws_base = "ws" + m.base_url[len("http") :]
        code, _out, err = cli(
            "live", "--type", "usdt_perp", "--symbols", "BTCUSDT", "--interval", "1m", "--history", "5",
            "--duration", "2", "--root", str(tmp_path), "--json", "--um-ws-url", f"{ws_base}/fws/market/",
        )  # fmt: skip
        assert code == 0, err
        ws = m.paths(websocket=True)
        assert ws and ws[0].startswith("/fws/market/stream?streams=btcusdt@kline_1m"), m.paths()
        assert any(p.startswith("/rest/fapi/v1/klines?") for p in m.paths(websocket=False))


def test_compare_quantclass_url_flag_and_sim_url(tmp_path: Path, sim) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "lake").mkdir()
    with mirror({"/qc": f"{sim.base_url}/quantclass"}) as m:
        code, _out, err = cli(
            "compare", "--type", "usdt_perp", "--root", str(tmp_path / "lake"), "--json",
            "--quantclass-url", f"{m.base_url}/qc/",
        )  # fmt: skip
        # an empty lake: nothing to compare (exit 5), but only after the reference came through m
        assert code == 5, err
        assert any(p.startswith("/qc/api/data/realtime/coin/binance-1h?offset=") for p in m.paths())
    code, _out, err = cli(
        "compare", "--type", "usdt_perp", "--root", str(tmp_path / "lake"), "--sim-url", sim.base_url
    )
    assert code == 5 and "nothing to compare" in err, err


# -- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ws_url", "https://fstream.binance.com/market"),  # websockets refuses it: retried forever
        ("um_ws_url", "http://127.0.0.1:1"),
        ("rest_url", "wss://fapi.binance.com"),
        ("archive_url", "ws://mirror.example"),
        ("quantclass_url", "wss://api.quantclass.cn"),
        ("sim_url", "ws://127.0.0.1:8765"),  # made ws://…/ws-um/market REST bases
        ("rest_url", "https://mirror.example/binance?token=x"),  # the paths went after the query
        ("rest_url", "https://mirror.example/binance#x"),
        ("rest_url", "fapi.binance.com"),
        ("rest_url", "https://"),
    ],
)
def test_a_url_of_the_wrong_kind_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(env={f"LAKE_{key.upper()}": value})
    with pytest.raises(ConfigError, match=key):
        load_settings(env={}, **{key: value})


def test_good_urls_of_every_kind_are_accepted() -> None:
    s = load_settings(
        env={
            "LAKE_REST_URL": "http://mirror.example:8080/binance/",
            "LAKE_WS_URL": "ws://mirror.example/ws/",
            "LAKE_SPOT_WS_URL": "wss://data-stream.binance.vision",
            "LAKE_SPOT_REST_URL": "https://data-api.binance.vision",
            "LAKE_WEBHOOK_URL": "https://oapi.dingtalk.com/robot/send?access_token=abc",
            "LAKE_SIM_URL": "https://sim.example/x/",
        }
    )
    assert s.endpoints.rest["um"] == "http://mirror.example:8080/binance"
    assert s.endpoints.ws["um"] == "ws://mirror.example/ws"
    assert s.endpoints.ws["spot"] == "wss://data-stream.binance.vision"


# -- proxies -------------------------------------------------------------------------------------


def test_rest_and_archive_honour_the_standard_proxy_variables(tmp_path: Path, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # websockets (>= 15) already goes through HTTPS_PROXY/HTTP_PROXY by default; aiohttp only with
    # trust_env. Behind a proxy the websocket connected and every REST request failed.
    routes = {
        "/fapi": sim.base_url,
        "/dv": f"{sim.base_url}/archive",
        "/bucket": f"{sim.base_url}/archive-bucket",
    }
    with mirror(routes) as proxy:
        for var in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.setenv("LAKE_REST_URL", "http://binance.invalid/fapi")
        monkeypatch.setenv("LAKE_ARCHIVE_URL", "http://binance.invalid/dv")
        monkeypatch.setenv("LAKE_ARCHIVE_LIST_URL", "http://binance.invalid/bucket")
        code, _out, err = cli(
            "backfill", "--type", "usdt_perp", "--symbols", "BTCUSDT", "--start", "2025-03-12",
            "--end", "2025-03-15T06:00", "--root", str(tmp_path), "--json",
        )  # fmt: skip
        assert code == 0, err
        assert {s.host for s in proxy.seen} == {"binance.invalid"}
        assert any(p.startswith("/bucket?") for p in proxy.paths())
        assert any(p.startswith("/fapi/fapi/v1/klines?") for p in proxy.paths())


def test_a_server_on_this_machine_is_reached_directly(tmp_path: Path, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The simulator (lake demo, the tests, a local mirror) must not need NO_PROXY=127.0.0.1 on a
    # machine whose proxy variables point at a proxy for the outside world (here: none listening).
    from lake.net import proxy_from_env

    for var in ("http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    code, _out, err = cli(
        "backfill", "--type", "usdt_perp", "--symbols", "BTCUSDT", "--days", "1",
        "--root", str(tmp_path), "--sim-url", sim.base_url,
    )  # fmt: skip
    assert code == 0, err
    assert not proxy_from_env("http://127.0.0.1:8765", "https://data.binance.vision")
    assert not proxy_from_env("ws://localhost:1/x") and not proxy_from_env("http://[::1]:80/")
    assert proxy_from_env("https://fapi.binance.com", "wss://fstream.binance.com/market", "")


def test_quantclass_honours_the_standard_proxy_variables(tmp_path: Path, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "lake").mkdir()
    # (the file URLs the API answers are absolute, at the simulator: fetched through the proxy too)
    with mirror({"/qc": f"{sim.base_url}/quantclass", "/quantclass": f"{sim.base_url}/quantclass"}) as proxy:
        for var in ("http_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.setenv("LAKE_QUANTCLASS_URL", "http://quantclass.invalid/qc")
        code, _out, err = cli("compare", "--type", "usdt_spot", "--root", str(tmp_path / "lake"))
        assert code == 5 and "nothing to compare" in err, err
        hosts = {s.host for s in proxy.seen if s.path_qs.startswith("/quantclass/files/")}
        assert "quantclass.invalid" in {s.host for s in proxy.seen} and hosts == {"127.0.0.1"}


# -- secrets -------------------------------------------------------------------------------------

KEY = "qc-K3y/+=&%sekret"
UUID = "8d1e2f3a-uuid-sekret"


@pytest.mark.parametrize(
    "answer",
    [
        lambda: web.Response(status=401, text=f"bad key {KEY} for {UUID}"),
        lambda: web.json_response({"code": 1, "msg": f"api-key {KEY} / uuid {UUID} refused"}),
        lambda: web.Response(status=500, text=f"{KEY} {UUID}"),
        lambda: web.Response(status=200, text=f"<html>{KEY} {UUID}</html>"),
        lambda: web.Response(status=302, headers={"Location": f"/login?key={KEY}&uuid={UUID}"}),
    ],
)
def test_quantclass_secrets_never_appear(tmp_path: Path, monkeypatch, caplog, answer) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "lake").mkdir()
    # (no waits between retries; patching asyncio.sleep itself also stopped aiohttp's cleanups)
    monkeypatch.setattr("lake.quantclass.client._FIRST_RETRY_S", 0.0)
    with mirror({}, answer=answer) as qc:
        monkeypatch.setenv("LAKE_QUANTCLASS_API_KEY", KEY)
        monkeypatch.setenv("LAKE_QUANTCLASS_UUID", UUID)
        monkeypatch.setenv("LAKE_QUANTCLASS_URL", f"{qc.base_url}/")
        with caplog.at_level(logging.DEBUG):
            code, out, err = cli("compare", "--type", "usdt_perp", "--root", str(tmp_path / "lake"), "--json")
        assert code != 0
        assert qc.seen and qc.seen[0].headers.get("api-key") == KEY  # it was sent, to the server only
        shown = out + err + caplog.text
        for secret in (KEY, UUID, "sekret"):
            assert secret not in shown, shown


@pytest.mark.parametrize(
    ("key", "value", "secret"),
    [
        ("webhook_url", "oapi.dingtalk.com/robot/send?access_token=SEKRET", "SEKRET"),
        ("webhook_url", "https://user:SEKRET@hooks.example/x y", "SEKRET"),
        ("quantclass_api_key", "[1, 'SEKRET']", "SEKRET"),
        ("quantclass_uuid", "{a = 'SEKRET'}", "SEKRET"),
    ],
)
def test_config_errors_do_not_echo_secrets(tmp_path: Path, key: str, value: str, secret: str) -> None:
    cfg = tmp_path / "lake.toml"
    cfg.write_text(f"{key} = {value if value[0] in '[{' else repr(value)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert key in str(info.value) and secret not in str(info.value)


# -- timeouts ------------------------------------------------------------------------------------


def test_http_timeout_reaches_every_client() -> None:
    from lake.ingest.rest_client import RestClient
    from lake.quantclass.client import QuantclassClient

    s = load_settings(env={"LAKE_HTTP_TIMEOUT": "42.5", "LAKE_QUANTCLASS_URL": "http://qc.example"})
    assert RestClient.from_settings(s, "um", state_dir=None).timeout == 42.5
    assert QuantclassClient.from_settings(s)._timeout.total == 42.5


def test_quantclass_file_downloads_follow_the_files_mirror(tmp_path: Path, sim) -> None:  # type: ignore[no-untyped-def]
    # The 7z file URLs come absolute from the API answer (upyun.quantclass.cn in production):
    # --quantclass-url does not move them, --quantclass-files-url does (path and signature kept).
    (tmp_path / "lake").mkdir()
    with mirror({"/qc": f"{sim.base_url}/quantclass", "/dl": sim.base_url}) as m:
        code, _out, err = cli(
            "compare", "--type", "usdt_spot", "--root", str(tmp_path / "lake"),
            "--quantclass-url", f"{m.base_url}/qc", "--quantclass-files-url", f"{m.base_url}/dl",
        )  # fmt: skip
        assert code == 5, err
        files = [p for p in m.paths() if p.startswith("/dl/quantclass/files/")]
        assert files and all("?" in p for p in files), m.paths()  # the signature kept


def test_config_flag_beats_lake_config_env(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env_cfg, flag_cfg = tmp_path / "env.toml", tmp_path / "flag.toml"
    env_cfg.write_text('rest_url = "http://from-env-config:1"\n')
    flag_cfg.write_text('rest_url = "http://from-flag-config:1"\n')
    s = load_settings(flag_cfg, env={"LAKE_CONFIG": str(env_cfg)})
    assert s.endpoints.rest["spot"] == "http://from-flag-config:1"
    assert load_settings(env={"LAKE_CONFIG": str(env_cfg)}).endpoints.rest["cm"] == "http://from-env-config:1"


def test_credentials_in_a_base_url_are_never_shown(tmp_path: Path) -> None:
    # a mirror reached as https://user:password@host/ : the URL is in error messages and log lines
    import os
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", "backfill", "--type", "usdt_perp", "--days", "1",
         "--symbols", "BTCUSDT", "--source", "rest", "--root", str(tmp_path),
         "--rest-url", "http://mirror-user:s3cr3t-pw@127.0.0.1:9/binance"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LAKE_PROGRESS": "0", "LAKE_HTTP_TIMEOUT": "1"},
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert "127.0.0.1:9" in res.stderr and "s3cr3t-pw" not in res.stderr + res.stdout
    assert "mirror-user" not in res.stderr + res.stdout
