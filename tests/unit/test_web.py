"""The web view's pure parts: logins and CSRF tokens, the page data, usage accounting."""

from dataclasses import dataclass
from typing import Optional

import pytest

from supervisor.control.cli import render_usage
from supervisor.control.peer import Peer
from supervisor.daemon.config import DaemonConfig
from supervisor.observe.usage import job_line, parse_period, usage
from supervisor.web import auth
from supervisor.web.auth import Logins
from supervisor.web.pages import curves, job_page, without_secrets

ALICE = Peer(100, 1000, 1000, frozenset({1000, 27}))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- logins ---------------------------------------------------------------------------
def test_a_login_token_buys_one_session_for_its_peer():
    logins = Logins(3600, Clock())
    token = logins.issue(ALICE)
    sid = logins.redeem(token)
    assert sid and logins.session(sid).peer == ALICE
    assert logins.redeem(token) is None  # spent
    assert logins.redeem("made-up") is None


def test_tokens_and_sessions_expire():
    clock = Clock()
    logins = Logins(600, clock)
    late = logins.issue(ALICE)
    clock.now += auth.TOKEN_TTL_S + 1
    assert logins.redeem(late) is None
    sid = logins.redeem(logins.issue(ALICE))
    clock.now += 599
    assert logins.session(sid) is not None
    clock.now += 2
    assert logins.session(sid) is None


def test_logout_ends_the_session():
    logins = Logins(600, Clock())
    sid = logins.redeem(logins.issue(ALICE))
    logins.end(sid)
    assert logins.session(sid) is None


def test_csrf_tokens_are_per_session_and_per_socket_user():
    logins = Logins(600, Clock())
    one, two = (logins.session(logins.redeem(logins.issue(ALICE))) for _ in range(2))
    assert one.csrf != two.csrf
    assert logins.socket_csrf(1000) == logins.socket_csrf(1000) != logins.socket_csrf(1001)
    assert Logins(600).socket_csrf(1000) != logins.socket_csrf(1000)  # a key per daemon run
    assert auth.same_token(one.csrf, one.csrf) and not auth.same_token(None, one.csrf)
    assert not auth.same_token(two.csrf, one.csrf)


def test_pending_tokens_are_bounded(monkeypatch):
    monkeypatch.setattr(auth, "MAX_PENDING_TOKENS", 3)
    logins = Logins(600, Clock())
    first = logins.issue(ALICE)
    for _ in range(3):
        logins.issue(ALICE)
    assert logins.redeem(first) is None  # the oldest made room
    assert len(logins._tokens) == 3


# -- page data ------------------------------------------------------------------------------
CSV = ("epoch,train/box_loss,val/box_loss,metrics/mAP50(B),metrics/mAP50-95(B),lr/pg0\n"
       "1,2.0,2.5,0.10,0.05,0.01\n"
       "2,1.8,2.3,0.2,0.1,0.01\n"
       "2,1.7,2.2,0.3,0.15,0.01\n"        # the resumed attempt rewrote epoch 2: the later row wins
       "4,1.5,2.0,0.4,0.2\n"              # torn row: skipped
       "5,1.4,1.9,nan,0.3,0.01\n")


def test_curves_group_columns_like_plot_and_leave_gaps():
    got = curves(CSV, epochs=6)
    assert got["epochs"] == [1, 2, 3, 4, 5, 6]
    groups = {g["title"]: g["series"] for g in got["groups"]}
    assert list(groups) == ["train losses", "val losses", "mAP"]
    assert groups["train losses"]["box_loss"] == [2.0, 1.7, None, None, None, None]
    assert set(groups["mAP"]) == {"mAP50(B)", "mAP50-95(B)"}
    assert got["epochs_with_rows"] == [1, 2]  # NaN and torn rows are not drawn


@pytest.mark.parametrize("text", [None, "", "garbage\n1,2\n", "loss,epoch\n1,2\n"])
def test_curves_of_no_results(text):
    assert curves(text, 3)["groups"] == []


def test_secrets_never_reach_a_page():
    data = {"job": {"name": "a", "env": {"WANDB_API_KEY": "s3cret"}, "notify": {"urls": ["tgram://x"]}},
            "events": [{"data": {"url": "https://hooks/x", "key": "epochs"}}]}
    shown = without_secrets(data)
    assert "s3cret" not in repr(shown) and "tgram" not in repr(shown) and "hooks" not in repr(shown)
    assert shown["events"][0]["data"] == {"key": "epochs"}


def test_job_page_says_why_there_are_no_curves():
    history = {"job": {"name": "a", "epochs": 3}, "attempts": [], "events": [], "goodput": {}}
    page = job_page(history, "permission denied: a is uid 1000 (alice)'s job")
    assert page["curves"]["groups"] == [] and page["curves_error"].startswith("permission denied")


# -- usage ------------------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    state: str = "running"
    created_at: float = 0.0
    updated_at: float = 0.0
    owner_uid: Optional[int] = 1000


@dataclass
class Attempt:
    number: int
    started_at: float
    ended_at: Optional[float]
    first_batch_at: Optional[float]
    cause: Optional[str] = None
    epochs_before: int = 0
    epochs_after: Optional[int] = None
    epochs_reached: Optional[int] = None
    batch_before: Optional[int] = None
    batches_reached: Optional[int] = None
    batches_per_epoch: Optional[int] = None
    devices: Optional[str] = "0,1"


H = 3600.0


def killed_and_resumed() -> list[Attempt]:
    """2 GPUs, 1 h an epoch. Attempt 1 trains 4 epochs but saved only 3 when it is killed at 4.5 h;
    attempt 2 (setup 0.25 h) resumes from epoch 3, trains epoch 4 again and goes on to epoch 6."""
    return [Attempt(1, 0, 4.5 * H, 0.1 * H, "killed", 0, 3, 4),
            Attempt(2, 5 * H, 8.25 * H, 5.25 * H, "completed", 3, 6, 6)]


def test_gpu_hours_and_what_the_restart_lost():
    line = job_line(Job("a", state="completed"), killed_and_resumed(), since=0, now=10 * H)
    assert line.hours == pytest.approx(4.5 + 3.25)
    assert line.gpu_hours == pytest.approx(2 * 7.75)
    # lost: attempt 2's setup (0.25 h) and its redone epoch (1 of the 3 it trained in 3 h: 1 h)
    assert line.lost_hours == pytest.approx(1.25)
    assert line.lost_gpu_hours == pytest.approx(2.5)
    assert (line.attempts, line.restarts) == (2, 1)


def test_only_the_period_counts():
    line = job_line(Job("a", state="completed"), killed_and_resumed(), since=5 * H, now=10 * H)
    assert line.hours == pytest.approx(3.25) and line.attempts == 1
    none = job_line(Job("a", state="completed"), killed_and_resumed(), since=9 * H, now=10 * H)
    assert none.attempts == 0 and none.hours == 0


def test_a_cpu_job_has_hours_but_no_gpu_hours():
    attempts = [Attempt(1, 0, H, 0.1 * H, "completed", 0, 1, 1, devices=None)]
    line = job_line(Job("c", state="completed"), attempts, 0, 2 * H)
    assert line.hours == pytest.approx(1) and line.gpu_hours == 0


def test_usage_per_user_and_job_and_the_cli_table():
    jobs = [Job("a", state="completed"), Job("b", owner_uid=1001)]
    attempts = {"a": killed_and_resumed(), "b": [Attempt(1, 9 * H, None, 9.1 * H, devices="3")]}
    report = usage(jobs, lambda name: attempts[name], 0, 10 * H, lambda j: f"uid {j.owner_uid}")
    assert [u["user"] for u in report["users"]] == ["uid 1000", "uid 1001"]
    assert report["users"][1]["gpu_hours"] == pytest.approx(1.0)
    assert report["total"]["gpu_hours"] == pytest.approx(16.5)
    assert report["total"]["lost_gpu_hours"] == pytest.approx(2.5)
    text = render_usage(report, "30d")
    assert "16.50 GPU-hours, 2.50 lost" in text and "uid 1001" in text and "LOST GPU-H" in text


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45", 45),
                                          ("1w", 604800), ("1.5h", 5400)])
def test_periods(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "soon", "infh", "nan"])
def test_bad_periods_are_refused(text):
    with pytest.raises(ValueError, match="--since"):
        parse_period(text)


# -- config -----------------------------------------------------------------------------------
def test_web_is_off_by_default_and_checked_when_on():
    assert DaemonConfig().web is None
    assert DaemonConfig(web={"listen": 8787}).web.listen == "8787"
    assert DaemonConfig(web={}).web.listen is None  # the Unix socket alone
    with pytest.raises(ValueError, match="web.listen"):
        DaemonConfig(web={"listen": "host:http"})
    with pytest.raises(ValueError, match="web.port"):
        DaemonConfig(web={"port": 8787})
