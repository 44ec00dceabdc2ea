"""7. Slack client cost: our ``SlackClient`` against ``slack_sdk.WebClient``, same emulator."""
from __future__ import annotations

import time
import typing as t

from . import common, profiling
from .env import Bench
from .stats import Outcome, median, paired, ratio

NUMBER = 7
TITLE = "Slack client cost"

METHOD = """\
In the benchmark process, one thread posts N messages in a row to the emulator with each client,
the same Block Kit message and channel: `driftwise_slack.slack_api.SlackClient.chat_post_message`
(one `requests.Session`, keep-alive) and, as the baseline,
`slack_sdk.WebClient(base_url=emulator).chat_postMessage` (urllib, a new connection per call).
Runs alternate, round by round. Reported: calls/s, and the client process's own CPU time per call
(`time.process_time`), which leaves out the emulator's share of the machine."""


def run(bench: Bench, opts: common.Options) -> Outcome:
    from slack_sdk import WebClient

    from driftwise_slack.slack_api import SlackClient

    from .jobs import message

    out = Outcome(NUMBER, "client", TITLE, METHOD)
    n = opts.n(1000, 200)
    org = bench.orgs[1]
    token, channel = bench.bot_token(org), org.channels[2]
    api = bench.emulator_url + "/api/"
    payload = message()
    ours_client = SlackClient(api, timeout=10)
    sdk_client = WebClient(token=token, base_url=api, timeout=10)

    def ours() -> None:
        ours_client.chat_post_message(token=token, channel=channel, text=payload["text"],
                                      blocks=payload["blocks"])

    def sdk() -> None:
        sdk_client.chat_postMessage(channel=channel, text=payload["text"],
                                    blocks=payload["blocks"], unfurl_links=False,
                                    unfurl_media=False)

    rates: dict[str, list[float]] = {"ours": [], "sdk": []}
    cpu: dict[str, list[float]] = {"ours": [], "sdk": []}
    for fn in (ours, sdk):  # warm up: connections, imports
        for _ in range(10):
            fn()
    for round_no in range(opts.rounds):
        for key, fn in (("ours", ours), ("sdk", sdk)):
            rate, per_call = _measure(fn, n)
            rates[key].append(rate)
            cpu[key].append(per_call)
        common.log(f"round {round_no + 1}: ours {rates['ours'][-1]:.0f}/s "
                   f"({cpu['ours'][-1]:.2f} ms CPU), slack_sdk {rates['sdk'][-1]:.0f}/s "
                   f"({cpu['sdk'][-1]:.2f} ms CPU) (load {common.loadavg()})")
    if opts.profile:
        parts = []
        for label, fn in (("ours", ours), ("slack_sdk", sdk)):
            prof = profiling.profiler()
            prof.start()
            for _ in range(opts.n(300, 100)):
                fn()
            prof.stop()
            parts.append(f"{label}, {opts.n(300, 100)} calls:\n\n" + profiling.summarize(
                prof, per=opts.n(300, 100), unit="call", top=4))
        out.profile = "\n\n".join(parts)
    ours_client.close()
    out.metric("ours: SlackClient.chat_post_message", rates["ours"], "calls/s")
    out.metric("baseline: slack_sdk WebClient.chat_postMessage", rates["sdk"], "calls/s")
    out.metric("ours: client CPU per call", cpu["ours"], "ms")
    out.metric("baseline: client CPU per call", cpu["sdk"], "ms")
    share = out.ratio("ours / slack_sdk, calls/s", ratio(median(rates["ours"]),
                                                         median(rates["sdk"])),
                      paired(rates["ours"], rates["sdk"]))
    out.ratio("slack_sdk / ours, CPU per call", ratio(median(cpu["sdk"]), median(cpu["ours"])),
              paired(cpu["sdk"], cpu["ours"]))
    out.target("≥ 1.0× slack_sdk's calls/s", f"{share:.2f}×", share >= 1.0)
    out.notes.append(f"N = {n} calls per client per round, sequential, one thread.")
    if share < 1.0:
        out.notes.append(
            "What bounds it: both clients wait on the same emulator; the difference is client CPU "
            "on a machine whose cores the emulator needs too. `requests.Session` costs more per "
            "call than slack_sdk's bare `urllib`: with `trust_env` on (the default) every call "
            "re-reads proxy variables and `~/.netrc` (`merge_environment_settings`), plus hooks, "
            "cookies and adapter lookup; see the profile. Our keep-alive connection does not "
            "make up for it on loopback, where a new TCP connection is cheap.")
    return out


def _measure(fn: t.Callable[[], None], n: int) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, cpu / n * 1000
