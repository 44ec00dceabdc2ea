"""3. Pacing: 100 posts to one channel that Slack limits to N per second, with no 429."""
from __future__ import annotations

import itertools

from . import common
from .env import Bench
from .stats import Outcome, median, percentile

NUMBER = 3
TITLE = "Pacing to Slack's per-channel limit"
COUNT = 100

METHOD = f"""\
The emulator enforces N `chat.postMessage` per second per channel (a sliding one-second window,
HTTP 429 `Retry-After: 1` beyond it) and the workers run with `SLACK_CHANNEL_RATE="N per second"`.
With RQ suspended, two worker processes are started and {COUNT} notifications for one channel are
queued with `dispatch()`; RQ is resumed at t0. Total time = the emulator's receive time of the last message minus
t0; the floor is {COUNT}/N s. 429s are counted from the emulator's call log. There is no baseline
process here: the floor is the baseline."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    rate = opts.pace_rate if not opts.quick else max(opts.pace_rate, 20)
    count = COUNT
    floor = count / rate
    out = Outcome(NUMBER, "pacing", TITLE, METHOD.replace("N per second", f"{rate} per second"))
    totals: list[float] = []
    fours: list[float] = []
    gaps: list[float] = []
    for round_no in range(opts.rounds):
        total, n429, gap = _round(bench, rate, count)
        totals.append(total)
        fours.append(n429)
        gaps.append(gap)
        common.log(f"round {round_no + 1}: {total:.2f}s for {count} at {rate}/s "
                   f"(floor {floor:.1f}s), {n429} 429s (load {common.loadavg()})")
    out.metric(f"total time for {count} posts at N={rate}/s", totals, "s")
    out.metric("429s seen", fours, "")
    out.metric("longest pause between two consecutive posts", gaps, "s")
    out.ratio(f"total / floor ({floor:.0f} s)", median(totals) / floor)
    out.target("zero 429s", f"{max(fours):.0f} in the worst round", max(fours) == 0)
    out.target(f"total ≤ 1.15 × the {count}/N floor ({1.15 * floor:.1f} s)",
               f"{median(totals):.2f} s = {median(totals) / floor:.2f}×",
               median(totals) <= 1.15 * floor)
    out.notes.append(f"N = {rate} messages per second per channel (`--pace-rate`).")
    if median(totals) > 1.15 * floor or max(fours) > 0:
        out.notes.append(
            "What bounds it: a post that finds the channel's window full is rescheduled through "
            "RQ's scheduler, which keeps due times in whole seconds (the package rounds each wait "
            "up to the next second so a retry is never early) and moves due jobs about once a "
            "second; posts therefore go out in bursts at second boundaries and a slot freed "
            "mid-second stays unused. The longest pause row shows the gaps this leaves. A 429 "
            "comes from the two clocks: our limiter takes its slot when the job starts, the "
            "emulator counts when the request arrives, so a burst can land a few milliseconds "
            "inside the previous burst's second.")
    return out


def _round(bench: Bench, rate: int, count: int) -> tuple[float, int, float]:
    org = bench.orgs[0]
    channel = org.channels[1]
    bench.clean()
    bench.slack.configure(per_second=rate)
    common.suspend(bench)
    workers = bench.start_workers(2, args=common.OUR_WORKER,
                                  env={"SLACK_CHANNEL_RATE": f"{rate} per second"})
    try:
        bench.queue_bulk([(org, channel)] * count)
        start = common.resume(bench)
        bench.wait(lambda: bench.statuses().get("sent", 0) >= count,
                   timeout=count / rate * 4 + 30, interval=0.1, what=f"{count} paced posts",
                   procs=workers)
    finally:
        bench.stop(workers)
        bench.slack.configure(per_second=None)
    received = sorted(m["received_at"] for m in bench.slack.messages(channel)
                      if m["received_at"] >= start)
    calls = [c for c in bench.slack.calls("chat.postMessage")
             if c["at"] >= start and c["channel"] == channel]
    n429 = sum(1 for c in calls if c["status"] == 429)
    gaps = [b - a for a, b in itertools.pairwise(received)]
    return (received[-1] - start if received else float("nan"), n429,
            percentile(gaps, 100) if gaps else float("nan"))
