"""9. Storm: 500 failures on one channel at default pacing, with digests and without."""
from __future__ import annotations

from . import common
from .env import Bench
from .stats import Outcome, median

NUMBER = 10
TITLE = "A storm on one channel: digests against one message per failure"
COUNT = 500
#: Posts measured in the digests-off baseline; its time is extrapolated to COUNT.
BASELINE = 60

METHOD = f"""\
With RQ suspended, {COUNT} scheduled-scan failures for one channel are queued with `dispatch()`
(the backlog an expired cloud credential leaves), two worker processes run with the default
`SLACK_CHANNEL_RATE` (1 per second) and `SLACK_DIGEST_MIN` (3), and RQ is resumed at t0.
*Visible* = every delivery row is `sent` and the emulator has received the message holding it;
time = the receive time of the last message used minus t0; messages = messages the channel
received. Baseline: the same with `SLACK_DIGEST_MIN=0` (one message per failure, paced). At one
message a second the baseline would take about {COUNT} s, so it is measured over its first
{BASELINE} posts and extrapolated linearly to {COUNT} (time to the {BASELINE}th post ×
{COUNT}/{BASELINE}); the extrapolation is stated as such."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    baseline_posts = opts.n(BASELINE, 20)
    out = Outcome(NUMBER, "storm", TITLE, METHOD.replace(f"first\n{BASELINE} posts",
                                                         f"first\n{baseline_posts} posts"))
    times: list[float] = []
    used: list[float] = []
    for round_no in range(opts.rounds):
        total, messages = _round(bench, COUNT, {"SLACK_DIGEST_MIN": "3", "SLACK_THREADS": "on"})
        times.append(total)
        used.append(messages)
        common.log(f"round {round_no + 1}: {COUNT} failures visible in {total:.2f}s "
                   f"using {messages} message(s) (load {common.loadavg()})")
    base, base_messages = _round(bench, baseline_posts,
                                 {"SLACK_DIGEST_MIN": "0", "SLACK_THREADS": "on"})
    extrapolated = base / baseline_posts * COUNT
    common.log(f"baseline: {baseline_posts} posts in {base:.1f}s ({base_messages} messages), "
               f"extrapolated to {COUNT}: {extrapolated:.0f}s")
    out.metric(f"time until all {COUNT} are visible, digests on", times, "s")
    out.metric("messages used, digests on", used, "")
    out.metric(f"baseline: time for its first {baseline_posts} posts, digests off", [base], "s")
    out.metric(f"baseline extrapolated to {COUNT} posts", [extrapolated], "s")
    speedup = extrapolated / median(times)
    out.ratio("baseline / digests (how many times sooner)", speedup)
    out.target("≥ 50× sooner than one message per failure", f"{speedup:.0f}×", speedup >= 50)
    out.target("≤ 20 messages", f"{max(used):.0f} in the worst round", max(used) <= 20)
    return out


def _round(bench: Bench, count: int, env: dict[str, str]) -> tuple[float, int]:
    org = bench.orgs[0]
    channel = org.channels[0]
    bench.clean()
    common.suspend(bench)
    workers = bench.start_workers(2, args=common.OUR_WORKER,
                                  env={"SLACK_CHANNEL_RATE": "1 per second", **env})
    try:
        bench.queue_bulk([(org, channel)] * count)
        start = common.resume(bench)
        bench.wait(lambda: _sent(bench) >= count,
                   timeout=count * 2.5 + 30, interval=0.1, what=f"{count} failures visible",
                   procs=workers)
    finally:
        bench.stop(workers)
    received = sorted(m["received_at"] for m in bench.slack.messages(channel)
                      if m["received_at"] >= start)
    return (received[-1] - start if received else float("nan"), len(received))


def _sent(bench: Bench) -> int:
    """Notifications sent (parent edits are rows too, but no notification)."""
    return int(bench.sql("SELECT count(*) FROM slack_deliveries WHERE status = 'sent' "
                         "AND event_type <> 'parent_update'")[0][0])
