"""Redis URLs: one server, or a Sentinel service with its sentinels."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sllm.config import HeadSettings, WorkerSettings
from sllm.kv.redis_url import SentinelTarget, check_redis_url, parse_sentinel, redacted


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:5000/mymaster/3"
    assert parse_sentinel(url) == SentinelTarget(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        service="mymaster",
        db=3,
        password="s@cret",
    )
    tls = parse_sentinel("rediss+sentinel://app:pw@s1/svc?sentinel_password=other")
    assert tls == SentinelTarget(
        sentinels=(("s1", 26379),),
        service="svc",
        username="app",
        password="pw",
        sentinel_password="other",
        ssl=True,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "names its service"),
        ("redis+sentinel://s1/svc/zero", "the database is a number"),
        ("redis+sentinel://s1/svc/0/more", "the service and the db only"),
        ("redis+sentinel://s1:port/svc", "a sentinel's port is a number"),
        ("redis+sentinel://s1:70000/svc", "a sentinel's port is a number"),
        ("redis+sentinel://s1,,s2/svc", "address is empty"),
        ("redis+sentinel://s1/svc?master=x", "unknown option(s) master"),
        ("http://localhost:6379", "a Redis URL starts with one of"),
    ],
)
def test_a_bad_redis_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_redis_url(url)
    assert says in str(raised.value)


def test_errors_and_logs_show_no_password() -> None:
    with pytest.raises(ValueError) as raised:
        check_redis_url("redis+sentinel://:hunter2@s1/svc/x")
    assert "hunter2" not in str(raised.value)
    assert redacted("redis+sentinel://u:hunter2@s1,s2/svc?sentinel_password=x") == (
        "redis+sentinel://***@s1,s2/svc"
    )


def test_settings_refuse_a_bad_redis_url_and_take_a_sentinel_one() -> None:
    with pytest.raises(ValidationError, match="a Redis URL starts with one of"):
        HeadSettings(redis_url="mysql://db")
    with pytest.raises(ValidationError, match="names its service"):
        WorkerSettings(redis_url="redis+sentinel://s1")
    url = "redis+sentinel://s1,s2,s3/sllm"
    assert HeadSettings(redis_url=url, worker_redis_url=url).redis_url == url
