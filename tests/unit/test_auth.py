"""API keys: parsing, constant-time lookup, and who a /v1 request is charged to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.requests import Request

import sllm.edge.auth
from sllm.config import HeadSettings
from sllm.edge.auth import (
    ApiKey,
    KeyConfigError,
    KeyRing,
    Limits,
    bearer_token,
    fingerprint,
    load_keys,
    matches,
    parse_entry,
    parse_keys,
)
from sllm.edge.errors import AuthenticationError
from sllm.edge.guards import Guard

SECRET = "sk-very-secret-0123"


def test_plain_keys_and_limits() -> None:
    assert parse_entry("sk-a", "x") == ApiKey("sk-a")
    assert parse_entry("  sk-b  rpm=60 tpm=10000 ", "x") == ApiKey("sk-b", Limits(60, 10000))
    assert parse_entry("sk-c tpm=0", "x") == ApiKey("sk-c", Limits(None, 0))


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "   # indented comment"])
def test_blank_and_comment_lines_are_skipped(line: str) -> None:
    assert parse_entry(line, "x") is None


def test_trailing_comments_and_hashes_inside_keys() -> None:
    assert parse_entry("sk-a rpm=5  # team a", "x") == ApiKey("sk-a", Limits(5, None))
    assert parse_entry("sk-#hash\t# note", "x") == ApiKey("sk-#hash")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"{SECRET} rpm=-1", "rpm must be a whole number"),
        (f"{SECRET} rpm=ten", "rpm must be a whole number"),
        (f"{SECRET} rpm=1 rpm=2", "rpm is given twice"),
        (f"{SECRET} burst=3", "unknown option 'burst'"),
        (f"{SECRET} 60", "unknown option '60'"),
        ("rpm=60", "starts with a limit"),
        ("sk-é", "printable ASCII"),
    ],
)
def test_bad_lines_are_named_without_the_key(line: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as err:
        parse_entry(line, "keys.txt line 3")
    assert "keys.txt line 3" in str(err.value)
    assert SECRET not in str(err.value)


def test_parse_keys_numbers_lines() -> None:
    with pytest.raises(KeyConfigError, match="f line 3"):
        parse_keys(["# header", "sk-a", "sk-b rpm=x"], "f")


def test_load_keys_from_env_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nsk-file-1 rpm=10\n\nsk-file-2 tpm=500 # batch jobs\n")
    keys = load_keys(" sk-env-1, sk-env-2 rpm=3 ,", keys_file)
    assert [k.secret for k in keys] == ["sk-env-1", "sk-env-2", "sk-file-1", "sk-file-2"]
    assert keys[1].limits == Limits(3, None)
    assert keys[3].limits == Limits(None, 500)
    assert load_keys(None, None) == [] and load_keys("", None) == []


def test_load_keys_refuses_duplicates_and_missing_files(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{SECRET}\n")
    with pytest.raises(KeyConfigError, match="configured twice") as err:
        load_keys(SECRET, keys_file)
    assert SECRET not in str(err.value) and fingerprint(SECRET) in str(err.value)
    with pytest.raises(KeyConfigError, match="cannot read the API keys file"):
        load_keys(None, tmp_path / "missing")
    with pytest.raises(KeyConfigError, match="SLLM_API_KEYS item 2"):
        load_keys("sk-a,sk-b rpm=x", None)


def test_keys_stay_out_of_reprs() -> None:
    key = ApiKey(SECRET, Limits(1, 2))
    ring = KeyRing([key])
    settings = HeadSettings(api_keys=SecretStr(SECRET), admin_key=SecretStr(SECRET))
    guard = Guard(api_keys=ring, admin_key=SECRET, cluster_token=SECRET)
    for text in (repr(key), str(key), repr(ring), repr(settings), str(settings), repr(guard)):
        assert SECRET not in text


def test_fingerprint_is_stable_and_short() -> None:
    assert fingerprint(SECRET) == fingerprint(SECRET) != fingerprint(SECRET + "x")
    assert len(fingerprint(SECRET)) == 16


def test_key_ring_finds_the_presented_key() -> None:
    a, b = ApiKey("sk-a"), ApiKey("sk-b", Limits(5, 0))
    ring = KeyRing([a, b])
    assert ring.find("sk-b") is b and ring.find("sk-a") is a
    assert ring.find("sk-c") is None and ring.find("") is None and ring.find("sk-") is None
    assert not KeyRing() and len(ring) == 2


def test_key_ring_compares_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first key matching must not end the search early: that would tell a caller
    by the time taken where a key sits in the ring."""
    calls: list[tuple[bytes, bytes]] = []
    real = sllm.edge.auth.hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(sllm.edge.auth.hmac, "compare_digest", counting)
    ring = KeyRing([ApiKey(f"sk-{i}") for i in range(5)])
    for presented in ("sk-0", "sk-4", "nope"):
        calls.clear()
        ring.find(presented)
        assert len(calls) == 5
        # Digests of equal length: a key's length does not show in the timing either.
        assert {len(x) for pair in calls for x in pair} == {32}


def test_matches() -> None:
    assert matches(SECRET, SECRET)
    assert not matches(SECRET[:-1], SECRET) and not matches("", SECRET)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-a", "sk-a"),
        ("bearer   sk-a  ", "sk-a"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_limits_fall_back_to_the_default() -> None:
    default = Limits(10, 1000)
    assert Limits().over(default) == default
    assert Limits(0, None).over(default) == Limits(0, 1000)
    assert Limits(0, 0).unlimited and not Limits(1, 0).unlimited and Limits().unlimited


def _request(authorization: str | None = None, host: str = "10.0.0.7") -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": headers,
        "client": (host, 5555),
    }
    return Request(scope)


def test_without_api_keys_v1_is_open_and_charged_per_address() -> None:
    guard = Guard(admin_key="sk-admin", default_limits=Limits(3, 0))
    caller = guard.api_caller(_request())
    assert caller.client_id == "addr:10.0.0.7" and caller.limits == Limits(3, 0)
    assert guard.api_caller(_request("Bearer whatever")).client_id == "addr:10.0.0.7"


def test_api_caller_with_keys() -> None:
    guard = Guard(
        api_keys=KeyRing([ApiKey("sk-a"), ApiKey("sk-b", Limits(5, None))]),
        admin_key="sk-admin",
        default_limits=Limits(1, 100),
    )
    assert guard.api_caller(_request("Bearer sk-a")).limits == Limits(1, 100)
    b = guard.api_caller(_request("Bearer sk-b"))
    assert b.client_id == f"key:{fingerprint('sk-b')}" and b.limits == Limits(5, 100)
    # The admin key reads models too (sllm models), under the default limits.
    assert guard.api_caller(_request("Bearer sk-admin")).limits == Limits(1, 100)
    for header in (None, "Bearer sk-c", "Basic sk-a"):
        with pytest.raises(AuthenticationError) as err:
            guard.api_caller(_request(header))
        assert err.value.status == 401 and err.value.code == "invalid_api_key"
        assert err.value.type == "invalid_request_error"
        assert err.value.headers == {"WWW-Authenticate": "Bearer"}
        assert "sk-" not in err.value.message


def test_guard_from_settings(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("sk-file rpm=2\n")
    settings = HeadSettings(
        api_keys=SecretStr("sk-env"),
        api_keys_file=keys_file,
        admin_key=SecretStr("  "),
        cluster_token=SecretStr("tok"),
        rate_limit_tpm=50,
    )
    guard = Guard.for_head(settings)
    assert len(guard.api_keys) == 2
    assert guard.admin_key is None  # an empty variable is unset, not the empty key
    assert guard.cluster_token == "tok"
    assert guard.default_limits == Limits(0, 50)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLLM_API_KEYS", "sk-a,sk-b rpm=3")
    monkeypatch.setenv("SLLM_ADMIN_KEY", "sk-admin")
    monkeypatch.setenv("SLLM_RATE_LIMIT_RPM", "7")
    guard = Guard.for_head(HeadSettings())
    assert guard.api_keys.find("sk-b") == ApiKey("sk-b", Limits(3, None))
    assert guard.admin_key == "sk-admin" and guard.default_limits == Limits(7, 0)


def test_pure_modules_import_no_io() -> None:
    code = (
        "import sys, sllm.edge.auth, sllm.head.token_estimate\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('redis', 'httpx', 'aiohttp')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
